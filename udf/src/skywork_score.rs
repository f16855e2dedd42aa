//! `skywork_score(instruction, [input,] output)`: the reward of an SFT row.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::types::logical_string;
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::{
    Coercion, ColumnarValue, DocSection, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    TypeSignatureClass, Volatility,
};

use skyscore_core::{Conversation, ScoreRequest};

use crate::args::{coerce_string_args, score_error, scores_to_columnar, StrArg};
use crate::options::expected_model;
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
        let first_text = |k: usize| instruction.get(rows[k]).unwrap_or_default().to_string();
        if let Some(expected) = expected_model(&args.config_options) {
            self.service.check_model(expected).map_err(|e| score_error(NAME, &rows, first_text, e))?;
        }
        let scores = self.service.score(NAME, conversations).map_err(|e| score_error(NAME, &rows, first_text, e))?;
        Ok(scores_to_columnar(n, &rows, scores, all_scalar))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray, StringViewArray};
    use datafusion::arrow::datatypes::{DataType, Field, Float32Type};
    use datafusion::common::config::ConfigOptions;
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl};

    use super::*;
    use crate::testing::FakeScorer;

    fn invoke(udf: &SkyworkScore, args: Vec<ColumnarValue>, rows: usize) -> Result<ColumnarValue> {
        let arg_fields = args.iter().map(|a| Arc::new(Field::new("a", a.data_type(), true))).collect();
        udf.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("s", DataType::Float32, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
    }

    fn expected(instruction: &str, input: Option<&str>, output: &str) -> f32 {
        FakeScorer::score_of(&ScoreRequest::new(instruction, input, output).conversation())
    }

    #[test]
    fn rows_score_by_the_model_card_prompt_and_nulls_stay_null() {
        let udf = SkyworkScore::new(crate::ScoringService::new(FakeScorer::new()));
        let instruction: ArrayRef = Arc::new(StringArray::from(vec![Some("Add"), Some("Add"), None, Some("Hi")]));
        let input: ArrayRef = Arc::new(StringViewArray::from(vec![Some("1 and 2"), None, Some("x"), Some("")]));
        let output: ArrayRef = Arc::new(StringArray::from(vec![Some("3"), Some("3"), Some("y"), Some("Hello")]));
        let args = vec![ColumnarValue::Array(instruction), ColumnarValue::Array(input), ColumnarValue::Array(output)];
        let ColumnarValue::Array(scores) = invoke(&udf, args, 4).unwrap() else { panic!("an array for array input") };
        let scores = scores.as_primitive::<Float32Type>();
        assert_eq!(scores.value(0), expected("Add", Some("1 and 2"), "3"));
        assert_eq!(scores.value(1), expected("Add", None, "3"));
        assert!(scores.is_null(2), "NULL instruction gives NULL");
        assert_eq!(scores.value(3), expected("Hi", None, "Hello"), "empty input is no input");
    }

    #[test]
    fn literals_give_a_scalar_and_two_arguments_mean_no_input() {
        let udf = SkyworkScore::new(crate::ScoringService::new(FakeScorer::new()));
        let lit = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        let out = invoke(&udf, vec![lit("Say hi."), lit("Hi!")], 1).unwrap();
        let ColumnarValue::Scalar(ScalarValue::Float32(Some(s))) = out else { panic!("a scalar: {out:?}") };
        assert_eq!(s, expected("Say hi.", None, "Hi!"));
    }

    #[test]
    fn a_row_error_names_the_function_and_the_row() {
        let udf = SkyworkScore::new(crate::ScoringService::new(FakeScorer::new()));
        let col = |v: Vec<&str>| ColumnarValue::Array(Arc::new(StringArray::from(v)) as ArrayRef);
        let args = vec![col(vec!["a", "b", "c"]), col(vec!["x", FakeScorer::BAD, "z"])];
        let err = invoke(&udf, args, 3).unwrap_err().to_string();
        assert!(
            err.contains("skywork_score: row 1 of its batch (\"b…\"): the chat template failed to render"),
            "{err}"
        );
    }

    #[test]
    fn argument_types_are_checked_at_planning_with_their_names() {
        let udf = SkyworkScore::new(crate::ScoringService::new(FakeScorer::new()));
        let utf8 = DataType::Utf8;
        assert_eq!(
            udf.coerce_types(&[utf8.clone(), DataType::Null, DataType::Utf8View]).unwrap(),
            [DataType::Utf8, DataType::Utf8, DataType::Utf8View]
        );
        let err = udf.coerce_types(&[utf8.clone(), DataType::Int64, utf8.clone()]).unwrap_err().to_string();
        assert!(err.contains("argument `input` must be a string, got Int64"), "{err}");
        let err = udf.coerce_types(&[utf8]).unwrap_err().to_string();
        assert!(err.contains("got 1 arguments"), "{err}");
    }
}
