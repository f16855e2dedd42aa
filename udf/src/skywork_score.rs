//! `skywork_score(instruction, [input,] output)`: the reward of an SFT row.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::types::logical_string;
use datafusion::common::{exec_datafusion_err, plan_err, Result};
use datafusion::logical_expr::{
    Coercion, ColumnarValue, DocSection, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    TypeSignatureClass, Volatility,
};

use crate::args::{coerce_string_args, scores_to_columnar, StrArg};
use crate::scorer::{Conversation, ScoreRequest};
use crate::service::ScoringService;

pub const NAME: &str = "skywork_score";

/// The doc section of skyscore's functions in `SHOW FUNCTIONS` and generated docs.
pub const DOC_SECTION: DocSection =
    DocSection { include: true, label: "Reward model functions", description: Some("Scores from a reward model.") };

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Reward-model score (the raw logit) of an SFT row, by the Skywork-Reward-V2 model-card procedure: \
         the conversation [user: instruction + \"\\n\" + input (when input is non-empty), assistant: output] \
         rendered with the model's chat template. NULL input means no input; NULL instruction or output gives \
         NULL. Each distinct row is scored once per session, however often a query evaluates it.",
        "skywork_score(instruction, input, output)",
    )
    .with_sql_example(
        "```sql\nSELECT id, skywork_score(instruction, input, output) AS score\nFROM sft\nORDER BY score DESC\nLIMIT 10;\n```",
    )
    .with_argument("instruction", "The instruction (user prompt). String expression.")
    .with_argument("input", "Optional context appended to the instruction after a newline; may be omitted.")
    .with_argument("output", "The response to score. String expression.")
    .build()
});

/// The scalar UDF; cheap to clone, all clones share one [`ScoringService`].
#[derive(Debug, Clone)]
pub struct SkyworkScore {
    signature: Signature,
    service: Arc<ScoringService>,
}

impl SkyworkScore {
    pub fn new(service: Arc<ScoringService>) -> Self {
        // `coerce_types` (tried first) passes any string type through as it is (Utf8, LargeUtf8,
        // Utf8View: no casts) and names the argument at fault; the coercible variants describe
        // the same contract for `SHOW FUNCTIONS`.
        let string = || Coercion::new_exact(TypeSignatureClass::Native(logical_string()));
        let signature = Signature::one_of(
            vec![
                TypeSignature::UserDefined,
                TypeSignature::Coercible(vec![string(), string(), string()]),
                TypeSignature::Coercible(vec![string(), string()]),
            ],
            Volatility::Immutable,
        );
        Self { signature, service }
    }
}

impl PartialEq for SkyworkScore {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.service, &other.service)
    }
}
impl Eq for SkyworkScore {}
impl Hash for SkyworkScore {
    fn hash<H: Hasher>(&self, state: &mut H) {
        NAME.hash(state);
        (Arc::as_ptr(&self.service) as usize).hash(state);
    }
}

impl ScalarUDFImpl for SkyworkScore {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            3 => coerce_string_args(NAME, &["instruction", "input", "output"], arg_types),
            2 => coerce_string_args(NAME, &["instruction", "output"], arg_types),
            n => plan_err!("{NAME} takes (instruction, input, output) or (instruction, output), got {n} arguments"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let n = if all_scalar { 1 } else { args.number_rows };
        let (instruction, input, output) = match args.args.as_slice() {
            [i, o] => (StrArg::new(i, "instruction")?, StrArg::Scalar(None), StrArg::new(o, "output")?),
            [i, x, o] => (StrArg::new(i, "instruction")?, StrArg::new(x, "input")?, StrArg::new(o, "output")?),
            other => return plan_err!("{NAME}: expected 2 or 3 arguments, got {}", other.len()),
        };
        let mut rows: Vec<usize> = Vec::with_capacity(n);
        let mut conversations: Vec<Conversation<'_>> = Vec::with_capacity(n);
        for i in 0..n {
            if let (Some(ins), Some(out)) = (instruction.get(i), output.get(i)) {
                rows.push(i);
                conversations.push(ScoreRequest::new(ins, input.get(i), out).conversation());
            }
        }
        let scores = self.service.score(conversations).map_err(|e| exec_datafusion_err!("{NAME}: {e}"))?;
        Ok(scores_to_columnar(n, &rows, scores, all_scalar))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}
