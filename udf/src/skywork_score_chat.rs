//! `skywork_score_chat(messages)`: the reward of a multi-turn conversation (ShareGPT /
//! OpenAI-style), scored with the model's own chat template.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::types::logical_string;
use datafusion::common::{exec_datafusion_err, exec_err, plan_err, Result};
use datafusion::logical_expr::{
    Coercion, ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature,
    TypeSignatureClass, Volatility,
};

use skyscore_core::{ChatTurn, Conversation};

use crate::args::{score_error, scores_to_columnar, StrArg};
use crate::options::expected_model;
use crate::service::ScoringService;
use crate::skywork_score::DOC_SECTION;

pub const NAME: &str = "skywork_score_chat";

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Reward-model score (the raw logit) of a conversation, rendered with the model's chat template. \
         `messages` is a list of structs with string fields `role` and `content`, or a JSON string of the same \
         shape ([{\"role\": \"user\", \"content\": \"...\"}, ...]). NULL messages give NULL.",
        "skywork_score_chat(messages)",
    )
    .with_sql_example("```sql\nSELECT id, skywork_score_chat(conversations) AS score FROM chats;\n```")
    .with_argument("messages", "list<struct<role, content>> or a JSON string of such a list.")
    .build()
});

#[derive(Debug, Clone)]
pub struct SkyworkScoreChat {
    signature: Signature,
    service: Arc<ScoringService>,
}

impl SkyworkScoreChat {
    pub fn new(service: Arc<ScoringService>) -> Self {
        // As for skywork_score: `coerce_types` decides; the coercible variant is for SHOW FUNCTIONS.
        let signature = Signature::one_of(
            vec![
                TypeSignature::UserDefined,
                TypeSignature::Coercible(vec![Coercion::new_exact(TypeSignatureClass::Native(logical_string()))]),
            ],
            Volatility::Immutable,
        );
        Self { signature, service }
    }
}

impl PartialEq for SkyworkScoreChat {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.service, &other.service)
    }
}
impl Eq for SkyworkScoreChat {}
impl Hash for SkyworkScoreChat {
    fn hash<H: Hasher>(&self, state: &mut H) {
        NAME.hash(state);
        (Arc::as_ptr(&self.service) as usize).hash(state);
    }
}

fn is_message_list(t: &DataType) -> bool {
    let item = match t {
        DataType::List(f) | DataType::LargeList(f) => f,
        _ => return false,
    };
    match item.data_type() {
        DataType::Struct(fields) => ["role", "content"].iter().all(|name| {
            fields.iter().any(|f| {
                f.name() == name && matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
            })
        }),
        _ => false,
    }
}

impl ScalarUDFImpl for SkyworkScoreChat {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [t] if is_message_list(t) => Ok(vec![t.clone()]),
            [DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View] => Ok(arg_types.to_vec()),
            [DataType::Null] => Ok(vec![DataType::Utf8]),
            [t] => plan_err!(
                "{NAME}: `messages` must be list<struct<role: string, content: string>> or a JSON string, got {t}"
            ),
            _ => plan_err!("{NAME} takes one argument (messages), got {}", arg_types.len()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return plan_err!("{NAME} takes one argument (messages)");
        };
        let (array, scalar) = match arg {
            ColumnarValue::Array(a) => (a.clone(), false),
            ColumnarValue::Scalar(s) => (s.to_array_of_size(1)?, true),
        };
        let n = array.len();
        let parsed = parse_messages(&array)?;
        let mut rows = Vec::with_capacity(n);
        let mut conversations: Vec<Conversation<'_>> = Vec::with_capacity(n);
        for (i, conv) in parsed.into_iter().enumerate() {
            if let Some(conv) = conv {
                rows.push(i);
                conversations.push(conv);
            }
        }
        // Only when a row fails: parse its messages again to show the start of its first turn
        // (the turns themselves moved on to the scorer).
        let first_text = |k: usize| {
            let row = parse_messages(&array.slice(rows[k], 1)).ok().and_then(|mut v| v.pop().flatten());
            row.and_then(|turns| turns.into_iter().next()).map(|t| t.content.into_owned()).unwrap_or_default()
        };
        if let Some(expected) = expected_model(&args.config_options) {
            self.service.check_model(expected).map_err(|e| score_error(NAME, &rows, first_text, e))?;
        }
        let scores = self.service.score(NAME, conversations).map_err(|e| score_error(NAME, &rows, first_text, e))?;
        Ok(scores_to_columnar(n, &rows, scores, scalar))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

/// One conversation per row (None for NULL rows).
fn parse_messages(array: &ArrayRef) -> Result<Vec<Option<Conversation<'static>>>> {
    let n = array.len();
    match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings = StrArg::from_array(array, "messages")?;
            (0..n)
                .map(|i| {
                    strings
                        .get(i)
                        .map(|json| {
                            serde_json::from_str::<Conversation<'static>>(json).map_err(|e| {
                                exec_datafusion_err!(
                                    "{NAME}: row {i}: messages is not a JSON list of {{role, content}}: {e}"
                                )
                            })
                        })
                        .transpose()
                })
                .collect()
        }
        DataType::List(_) => {
            list_rows(n, |i| array.as_list::<i32>().is_valid(i).then(|| array.as_list::<i32>().value(i)))
        }
        DataType::LargeList(_) => {
            list_rows(n, |i| array.as_list::<i64>().is_valid(i).then(|| array.as_list::<i64>().value(i)))
        }
        other => exec_err!("{NAME}: unsupported messages type {other}"),
    }
}

fn list_rows(n: usize, row: impl Fn(usize) -> Option<ArrayRef>) -> Result<Vec<Option<Conversation<'static>>>> {
    (0..n)
        .map(|i| {
            let Some(turns) = row(i) else { return Ok(None) };
            let turns = turns.as_struct();
            let role = turns.column_by_name("role").expect("checked at planning");
            let content = turns.column_by_name("content").expect("checked at planning");
            let (role, content) = (StrArg::from_array(role, "role")?, StrArg::from_array(content, "content")?);
            let mut conv = Vec::with_capacity(turns.len());
            for t in 0..turns.len() {
                match (role.get(t), content.get(t)) {
                    (Some(r), Some(c)) => conv.push(ChatTurn::new(r.to_string(), c.to_string())),
                    _ => return exec_err!("{NAME}: row {i}: message {t} has a NULL role or content"),
                }
            }
            Ok(Some(conv))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, AsArray, ListArray, StringArray, StructArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    use datafusion::arrow::datatypes::{Field, Fields, Float32Type};
    use datafusion::common::config::ConfigOptions;
    use datafusion::logical_expr::ScalarFunctionArgs;

    use super::*;
    use crate::testing::FakeScorer;

    fn invoke(udf: &SkyworkScoreChat, arg: ArrayRef) -> Result<ColumnarValue> {
        let rows = arg.len();
        udf.invoke_with_args(ScalarFunctionArgs {
            arg_fields: vec![Arc::new(Field::new("m", arg.data_type().clone(), true))],
            args: vec![ColumnarValue::Array(arg)],
            number_rows: rows,
            return_field: Arc::new(Field::new("s", DataType::Float32, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
    }

    fn scores(out: ColumnarValue) -> Vec<Option<f32>> {
        let ColumnarValue::Array(a) = out else { panic!("an array") };
        a.as_primitive::<Float32Type>().iter().collect()
    }

    #[test]
    fn json_and_list_messages_score_alike() {
        let udf = SkyworkScoreChat::new(crate::ScoringService::new(FakeScorer::new()));
        let conv = vec![ChatTurn::new("user", "hi"), ChatTurn::new("assistant", "hello")];
        let json: ArrayRef = Arc::new(StringArray::from(vec![
            Some(r#"[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]"#),
            None,
        ]));
        assert_eq!(scores(invoke(&udf, json).unwrap()), [Some(FakeScorer::score_of(&conv)), None]);

        let fields =
            Fields::from(vec![Field::new("role", DataType::Utf8, true), Field::new("content", DataType::Utf8, true)]);
        let turns = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(StringArray::from(vec!["user", "assistant"])) as ArrayRef,
                Arc::new(StringArray::from(vec!["hi", "hello"])) as ArrayRef,
            ],
            None,
        );
        let item = Arc::new(Field::new("item", DataType::Struct(fields), true));
        let list: ArrayRef = Arc::new(ListArray::new(item, OffsetBuffer::from_lengths([2]), Arc::new(turns), None));
        assert!(udf.coerce_types(&[list.data_type().clone()]).is_ok());
        assert_eq!(scores(invoke(&udf, list).unwrap()), [Some(FakeScorer::score_of(&conv))]);
    }

    #[test]
    fn malformed_json_names_the_row() {
        let udf = SkyworkScoreChat::new(crate::ScoringService::new(FakeScorer::new()));
        let json: ArrayRef =
            Arc::new(StringArray::from(vec![r#"[{"role": "user", "content": "hi"}]"#, "[{\"role\": 1}]"]));
        let err = invoke(&udf, json).unwrap_err().to_string();
        assert!(err.contains("skywork_score_chat: row 1: messages is not a JSON list of {role, content}"), "{err}");
    }

    #[test]
    fn non_message_types_are_refused_at_planning() {
        let udf = SkyworkScoreChat::new(crate::ScoringService::new(FakeScorer::new()));
        let err = udf.coerce_types(&[DataType::Int64]).unwrap_err().to_string();
        assert!(err.contains("`messages` must be list<struct<role: string, content: string>>"), "{err}");
    }
}
