//! A checkpoint and the rows are input the user did not write: whatever config.json holds,
//! loading and scoring end in an error that names the file and the field, or in a score; any
//! Unicode renders through the real chat templates; any JSON text given as messages is a
//! conversation or an error. Never a panic or a hang.

mod common;

use std::path::Path;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{json, Value};
use skyscore_core::{conversation_key, ChatTurn, Conversation, ScoreRequest, Scorer};
use skyscore_engine::checkpoint::Checkpoint;
use skyscore_engine::hub::{FileSource, ModelSource};
use skyscore_engine::template::ChatTemplate;
use skyscore_engine::{Engine, EngineOptions};

/// A copy of tiny-llama (Qwen3 when `qwen3`) whose config.json is `config`; the weights are linked.
fn checkpoint_with(dir: &Path, config: &Value, qwen3: bool) {
    let source = model_dir(if qwen3 { "tiny-qwen3" } else { "tiny-llama" });
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name == "config.json" {
            continue;
        }
        if path.extension().is_some_and(|e| e == "safetensors") {
            std::os::unix::fs::symlink(&path, dir.join(name)).unwrap();
        } else {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    std::fs::write(dir.join("config.json"), serde_json::to_vec(config).unwrap()).unwrap();
}

fn base_config(qwen3: bool) -> Value {
    let source = model_dir(if qwen3 { "tiny-qwen3" } else { "tiny-llama" });
    serde_json::from_slice(&std::fs::read(source.join("config.json")).unwrap()).unwrap()
}

/// Loads and scores one row; `Err` carries the error text.
fn load_and_score(dir: &Path) -> Result<f32, String> {
    let options = EngineOptions { store: None, ..Default::default() };
    let engine = Engine::load(dir.to_str().unwrap(), &options).map_err(|e| e.to_string())?;
    let conversation = ScoreRequest::new("Name a color.", None, "Blue.").conversation();
    let scored = engine.score(&[conversation]).map_err(|e| e.to_string())?;
    scored.rows[0].clone().map(|r| r.score)
}

const FIELDS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "max_position_embeddings",
    "rope_theta",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "num_labels",
    // Rope scaling, field by field (Llama's llama3 block; Qwen3 gets a block of its own) and
    // whole.
    "rope_scaling.rope_type",
    "rope_scaling.factor",
    "rope_scaling.low_freq_factor",
    "rope_scaling.high_freq_factor",
    "rope_scaling.original_max_position_embeddings",
    "rope_scaling",
    "rope_parameters.rope_theta",
    "rope_parameters.rope_type",
    "rope_parameters.factor",
];

/// Sets `field` (`name` or `block.name`) of `config` to `value`; a block that is not an object
/// becomes one first.
fn set_field(config: &mut Value, field: &str, value: Value) {
    match field.split_once('.') {
        None => config[field] = value,
        Some((block, name)) => {
            if !config[block].is_object() {
                config[block] = json!({});
            }
            config[block][name] = value;
        }
    }
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(3)),
        Just(json!(u64::MAX)),
        Just(json!(1u64 << 40)),
        Just(json!(null)),
        Just(json!("12")),
        Just(json!(1e308)),
        Just(json!(-0.0)),
        Just(json!([1, 2])),
        Just(json!("llama3")),
        Just(json!("linear")),
        Just(json!("yarn")),
        (0u64..5000).prop_map(|v| json!(v)),
        (-10.0f64..10.0).prop_map(|v| json!(v)),
    ]
}

proptest! {
    // Each case loads a tiny checkpoint (tens of milliseconds): 64 cases keep CI fast.
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, rng_seed: RngSeed::Fixed(2026), ..ProptestConfig::default() })]

    #[test]
    fn random_config_numbers_give_an_error_or_a_score(
        qwen3 in any::<bool>(),
        changes in proptest::collection::vec((0..FIELDS.len(), any_value()), 1..3),
    ) {
        let mut config = base_config(qwen3);
        for (field, value) in &changes {
            set_field(&mut config, FIELDS[*field], value.clone());
        }
        let dir = tempfile::tempdir().unwrap();
        checkpoint_with(dir.path(), &config, qwen3);
        match load_and_score(dir.path()) {
            Ok(score) => prop_assert!(score.is_finite()),
            Err(message) => prop_assert!(!message.is_empty()),
        }
    }
}

/// The cases of the issue, each with the message a user gets.
#[test]
fn broken_configs_name_the_file_and_the_field() {
    let cases: &[(&str, Value, &str)] = &[
        ("num_attention_heads", json!(0), "`num_attention_heads` is 0; must be between 1 and 1024"),
        ("num_key_value_heads", json!(3), "`num_key_value_heads` is 3; must divide num_attention_heads"),
        ("hidden_size", json!(1u64 << 40), "`hidden_size` is 1099511627776; must be between 1 and 65536"),
        ("rms_norm_eps", json!(0.0), "`rms_norm_eps` is 0; must be a positive finite number"),
        ("pad_token_id", json!(99_999_999), "`pad_token_id` is 99999999; must be a token id below vocab_size"),
        ("eos_token_id", json!([1, 70_000]), "`eos_token_id` is 70000; must be a token id below vocab_size"),
        ("head_dim", json!(7), "`head_dim` is 7; rotary embeddings need an even size"),
    ];
    for (field, value, expected) in cases {
        let mut config = base_config(false);
        config[*field] = value.clone();
        let dir = tempfile::tempdir().unwrap();
        checkpoint_with(dir.path(), &config, false);
        let err = load_and_score(dir.path()).unwrap_err();
        assert!(err.contains("config.json") && err.contains(expected), "{field}: {err}");
    }
}

fn real_template(model: &str) -> ChatTemplate {
    let ckpt = Checkpoint::resolve("t", &FileSource::new(ModelSource::Local(model_dir(model)))).unwrap();
    ChatTemplate::new(ckpt.chat_template.as_deref().unwrap(), ckpt.special_tokens()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, rng_seed: RngSeed::Fixed(2026), ..ProptestConfig::default() })]

    /// Any Unicode (control characters, lone combining marks, Jinja syntax, emoji) renders
    /// through the real Llama-3 and Qwen3 templates, and the text comes out whole.
    #[test]
    fn any_unicode_renders_through_the_real_templates(
        instruction in "\\PC{0,80}|[{}%#<>|\\\\'\"\\n\\t\\u{0}-\\u{1f}]{0,40}",
        input in proptest::option::of("\\PC{0,40}"),
        output in "\\PC{0,80}",
    ) {
        let conversation = ScoreRequest::new(&instruction, input.as_deref(), &output).conversation();
        for model in ["tiny-llama", "tiny-qwen3"] {
            let text = real_template(model).render(&conversation, false).unwrap();
            // The templates trim the answer's ends (Llama-3: `| trim`, Qwen3: `lstrip('\n')`).
            let answer = output.trim_matches(|c: char| c.is_whitespace() || c.is_control());
            prop_assert!(text.contains(answer), "{model}: the answer is in the prompt");
        }
    }

    /// The conversation key is a pure function of the turns: equal turns, equal keys; a change
    /// of one character changes it.
    #[test]
    fn the_conversation_key_follows_the_text(a in "\\PC{0,60}", b in "\\PC{0,60}") {
        let ka = conversation_key(&ScoreRequest::new(&a, None, &b).conversation());
        prop_assert_eq!(ka, conversation_key(&ScoreRequest::new(&a, None, &b).conversation()));
        let changed = format!("{a}x");
        prop_assert_ne!(ka, conversation_key(&ScoreRequest::new(&changed, None, &b).conversation()));
    }

    /// Chat messages arrive as JSON text: anything is a conversation or an error, never a panic.
    #[test]
    fn any_json_text_is_a_conversation_or_an_error(text in "\\PC{0,60}|\\[\\{\"role\": ?\"(user|assistant)\", ?\"content\": ?\"\\PC{0,10}\"\\}\\]") {
        if let Ok(turns) = serde_json::from_str::<Conversation<'static>>(&text) {
            let rendered = real_template("tiny-qwen3").render(&turns, false);
            prop_assert!(rendered.is_ok() || turns.iter().any(|t: &ChatTurn| t.role != "user" && t.role != "assistant"));
        }
    }
}
