//! Parity with transformers: prompt text, token ids and scores of the shipped tiny
//! checkpoints on real SFT rows and edge cases, against tests/fixtures/expected (computed by
//! tests/reference/make_fixtures.py with the model-card procedure, f32, batch 1).

mod common;

use common::*;
use skyscore::encode::TruncationSide;
use skyscore::{Engine, EngineOptions};
use skyscore_core::ScoreRequest;

const TOLERANCE: f64 = 1e-4;

fn engine(model: &str, max_length: usize, side: TruncationSide, batch_size: usize) -> Engine {
    let opts = EngineOptions { max_length, truncation_side: side, batch_size, ..Default::default() };
    Engine::load(model_dir(model).to_str().unwrap(), &opts).unwrap()
}

fn requests(rows: &[Row]) -> Vec<ScoreRequest<'_>> {
    rows.iter().map(|r| ScoreRequest::new(&r.instruction, r.input.as_deref(), &r.output)).collect()
}

/// Checks text, ids, truncation flag and score of every expected row; returns max |Δ score|.
fn check(model: &str, case: &str, max_length: usize, side: TruncationSide, batch_size: usize) -> f64 {
    let all_rows = parity_rows();
    let expected = expected(model, case);
    let rows: Vec<Row> =
        expected.iter().map(|e| all_rows.iter().find(|r| r.id == e.id).expect("expected row exists").clone()).collect();
    assert!(rows.len() >= 70, "{case}: too few rows ({})", rows.len());
    let engine = engine(model, max_length, side, batch_size);
    let reqs = requests(&rows);
    for (req, exp) in reqs.iter().zip(&expected) {
        let text = engine.encoder().render(req).unwrap();
        assert_eq!(text, exp.text, "{model}/{case} id {}: rendered prompt differs", exp.id);
        let enc = engine.encoder().encode(req).unwrap();
        assert_eq!(enc.ids, exp.input_ids, "{model}/{case} id {}: token ids differ", exp.id);
        assert_eq!(enc.ids.len(), exp.num_tokens);
        assert_eq!(enc.truncated, exp.truncated, "{model}/{case} id {}: truncation flag", exp.id);
    }
    let scores = scores(&engine, &reqs);
    let mut max_delta = 0f64;
    for (score, exp) in scores.iter().zip(&expected) {
        let delta = (*score as f64 - exp.score).abs();
        assert!(
            delta <= TOLERANCE,
            "{model}/{case} id {}: score {score} vs transformers {} (|Δ|={delta:e})",
            exp.id,
            exp.score
        );
        max_delta = max_delta.max(delta);
    }
    eprintln!("{model}/{case} batch {batch_size}: {} rows, max |Δ| = {max_delta:.3e}", expected.len());
    max_delta
}

#[test]
fn llama_full_length_matches_transformers() {
    check("tiny-llama", "full", 4096, TruncationSide::Right, 16);
}

#[test]
fn qwen3_full_length_matches_transformers() {
    check("tiny-qwen3", "full", 4096, TruncationSide::Right, 16);
}

#[test]
fn right_truncation_matches_transformers() {
    for model in MODELS {
        check(model, "right64", 64, TruncationSide::Right, 16);
    }
}

#[test]
fn left_truncation_matches_transformers() {
    for model in MODELS {
        check(model, "left64", 64, TruncationSide::Left, 16);
    }
}

#[test]
fn batch_one_matches_transformers_too() {
    for model in MODELS {
        check(model, "right64", 64, TruncationSide::Right, 1);
    }
}

/// A row's score must not depend on the rows that share its batch: batch 1, batch 16 and a
/// shuffled order give the same score per row.
#[test]
fn scores_do_not_depend_on_batch_mates() {
    let rows = parity_rows();
    let rows = &rows[..120];
    for model in MODELS {
        let reqs = requests(rows);
        let one = scores(&engine(model, 256, TruncationSide::Right, 1), &reqs);
        let sixteen = scores(&engine(model, 256, TruncationSide::Right, 16), &reqs);
        let mut reversed_reqs = reqs.clone();
        reversed_reqs.reverse();
        let mut reversed = scores(&engine(model, 256, TruncationSide::Right, 7), &reversed_reqs);
        reversed.reverse();
        for i in 0..rows.len() {
            assert!((one[i] - sixteen[i]).abs() <= 1e-5, "{model} row {i}: {} vs {}", one[i], sixteen[i]);
            assert!((one[i] - reversed[i]).abs() <= 1e-5, "{model} row {i}: {} vs {}", one[i], reversed[i]);
        }
    }
}

/// Several replicas (`--device cpu,cpu,cpu` here; `cuda:0,cuda:1` on a GPU node) share the
/// batches of one call; every score lands on its own row. Tokenizing in small pipelined chunks
/// gives the same scores as well.
#[test]
fn replicas_and_pipelined_chunks_keep_every_score_on_its_row() {
    let all_rows = parity_rows();
    let expected = expected("tiny-llama", "full");
    let rows: Vec<Row> = expected.iter().map(|e| all_rows.iter().find(|r| r.id == e.id).unwrap().clone()).collect();
    let reqs = requests(&rows);
    let opts = EngineOptions {
        batch_size: 5,
        devices: "cpu,cpu,cpu".parse().unwrap(),
        chunk_rows: Some(37),
        ..Default::default()
    };
    let engine = Engine::load(model_dir("tiny-llama").to_str().unwrap(), &opts).unwrap();
    let scores = scores(&engine, &reqs);
    assert_eq!(scores.len(), expected.len());
    for (score, exp) in scores.iter().zip(&expected) {
        let delta = (*score as f64 - exp.score).abs();
        assert!(delta <= TOLERANCE, "id {}: {score} vs transformers {} (|Δ|={delta:e})", exp.id, exp.score);
    }
}

#[test]
fn device_lists_parse_and_reject_mixtures() {
    use skyscore::DeviceSpec;
    assert_eq!(DeviceSpec::parse_list("cuda").unwrap(), vec![DeviceSpec::Cuda(0)]);
    assert_eq!(DeviceSpec::parse_list("cuda:0, cuda:1").unwrap(), vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]);
    assert_eq!(DeviceSpec::list_to_string(&[DeviceSpec::Cuda(0), DeviceSpec::Cuda(3)]), "cuda:0,cuda:3");
    assert!(DeviceSpec::parse_list("cpu,cuda:0").unwrap_err().contains("mixes cpu and cuda"));
    assert!(DeviceSpec::parse_list("cuda:x").unwrap_err().contains("unknown device `cuda:x`"));
    assert!(DeviceSpec::parse_list("").is_err());
}

/// The real Llama-3 and Qwen3 chat templates render multi-turn conversations (system turns,
/// think blocks, tool responses, generation prompts) exactly as transformers does.
#[test]
fn real_templates_render_like_transformers() {
    use skyscore::checkpoint::Checkpoint;
    use skyscore::hub::{FileSource, ModelSource};
    use skyscore::template::ChatTemplate;
    use skyscore_core::ChatTurn;

    #[derive(serde::Deserialize)]
    struct Case {
        messages: Vec<ChatTurn<'static>>,
        text: String,
        text_with_generation_prompt: String,
    }
    for (which, model) in [("llama3", "tiny-llama"), ("qwen3", "tiny-qwen3")] {
        let src = std::fs::read_to_string(fixture(&format!("templates/{which}.jinja"))).unwrap();
        let dir = model_dir(model);
        let ckpt = Checkpoint::resolve("t", &FileSource::new(ModelSource::Local(dir))).unwrap();
        assert_eq!(ckpt.chat_template.as_deref(), Some(src.as_str()), "{which}: checkpoint carries the real template");
        let template = ChatTemplate::new(&src, ckpt.special_tokens()).unwrap();
        let cases: Vec<Case> = read_jsonl(&fixture(&format!("templates/{which}.renders.jsonl")));
        assert!(cases.len() >= 4);
        for case in cases {
            assert_eq!(template.render(&case.messages, false).unwrap(), case.text, "{which}");
            assert_eq!(template.render(&case.messages, true).unwrap(), case.text_with_generation_prompt, "{which}");
        }
    }
}

/// Half-precision weights run the same path; scores stay within half-precision noise of
/// transformers' f32 scores.
#[test]
fn half_precision_scores_stay_close() {
    let rows = parity_rows();
    let reqs = requests(&rows);
    // bf16: on a CPU with AVX512-BF16 the linear layers run through skyscore's bf16 kernel
    // (everything else f32), elsewhere through candle's bf16; either stays within 0.05.
    for model in MODELS {
        let expected = expected(model, "full");
        for (dtype, bound) in [("f16", 1e-2), ("bf16", 5e-2)] {
            let opts = EngineOptions { dtype: dtype.parse().unwrap(), ..Default::default() };
            let engine = Engine::load(model_dir(model).to_str().unwrap(), &opts).unwrap();
            let scores = scores(&engine, &reqs);
            let max_delta = scores.iter().zip(&expected).map(|(s, e)| (*s as f64 - e.score).abs()).fold(0.0, f64::max);
            eprintln!("{model} {dtype}: max |Δ| vs transformers f32 over {} rows = {max_delta:.3e}", rows.len());
            assert!(max_delta <= bound, "{model} {dtype}: max |Δ| {max_delta}");
            assert!(max_delta > 0.0, "{dtype}: weights really were converted");
        }
    }
}
