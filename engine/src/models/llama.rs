//! `LlamaForSequenceClassification`: the Llama decoder (GQA, llama3 rope scaling) plus the
//! `score` head, evaluated at the pooled token. No KV cache: scoring is one full forward.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear_no_bias, Linear, VarBuilder};
use serde::Deserialize;

use super::layers::{
    attention, run_decoder, score_rows, split_heads, AttentionProducts, GatedMlp, LinearKind, Proj, QueryRows, RmsNorm,
    RopeParameters, RotaryEmbedding, TokenEmbedding,
};
use super::ModelBatch;

#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    /// Positions the model was trained for; longer prompts are refused (see `Engine::load`).
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeParameters>,
    /// Newer transformers releases write the rope settings (theta included) here.
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn rope(&self) -> Result<RotaryEmbedding> {
        let (scaling, parameters) = (self.rope_scaling.as_ref(), self.rope_parameters.as_ref());
        RotaryEmbedding::from_config(self.head_dim(), self.rope_theta, scaling, parameters, 10_000.0)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    products: AttentionProducts,
}

impl Attention {
    fn load(cfg: &LlamaConfig, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: Proj::load(h, heads * hd, bias, vb.pp("q_proj"), kind)?,
            k_proj: Proj::load(h, kv_heads * hd, bias, vb.pp("k_proj"), kind)?,
            v_proj: Proj::load(h, kv_heads * hd, bias, vb.pp("v_proj"), kind)?,
            o_proj: Proj::load(heads * hd, h, bias, vb.pp("o_proj"), kind)?,
            heads,
            kv_heads,
            head_dim: hd,
            products: AttentionProducts::for_kind(kind),
        })
    }

    /// `xs` `[b, t, h]` gives keys and values; queries come from the rows `queries` selects.
    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, queries: &QueryRows) -> Result<Tensor> {
        let b = xs.dim(0)?;
        let (hd, kv) = (self.head_dim, self.kv_heads);
        let (queries_in, keys_in) = queries.projection_inputs(xs)?;
        let q_rope = Some((&queries.cos, &queries.sin));
        let q = split_heads(&queries_in.apply(|x| self.q_proj.forward(x))?, (self.heads, hd), None, q_rope)?;
        let k = split_heads(&keys_in.apply(|x| self.k_proj.forward(x))?, (kv, hd), None, Some((cos, sin)))?;
        let v = split_heads(&keys_in.apply(|x| self.v_proj.forward(x))?, (kv, hd), None, None)?;
        let out = attention(&q, &k, &v, queries, 1.0 / (self.head_dim as f64).sqrt(), self.products)?;
        let tq = q.dim(2)?;
        let out = out.transpose(1, 2)?.reshape((b, tq, self.heads * self.head_dim))?;
        queries.packed(&out)?.apply(|x| self.o_proj.forward(x))
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

impl DecoderLayer {
    fn load(cfg: &LlamaConfig, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::load(cfg, vb.pp("self_attn"), kind)?,
            post_attention_layernorm: RmsNorm::load(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: GatedMlp::load(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, vb.pp("mlp"), kind)?,
        })
    }

    /// The layer's output at the rows `queries` selects (`[b, t, h]`, or `[b, 1, h]` pooled).
    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, queries: &QueryRows) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.input_layernorm.forward(xs)?, cos, sin, queries)?;
        let xs = (queries.select(xs)? + h)?;
        let h = queries.packed(&xs)?.apply(|x| self.mlp.forward(&self.post_attention_layernorm.forward(x)?))?;
        xs + h
    }
}

#[derive(Debug, Clone)]
pub struct LlamaForSequenceClassification {
    embed_tokens: TokenEmbedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    score: Linear,
    rope: RotaryEmbedding,
}

impl LlamaForSequenceClassification {
    pub fn load(cfg: &LlamaConfig, vb: VarBuilder, kind: &LinearKind) -> Result<Self> {
        let m = vb.pp("model");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(cfg, m.pp(format!("layers.{i}")), kind))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: TokenEmbedding::load(cfg.vocab_size, cfg.hidden_size, m.pp("embed_tokens"), kind)?,
            layers,
            norm: RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            score: linear_no_bias(cfg.hidden_size, 1, vb.pp("score"))?,
            rope: cfg.rope()?,
        })
    }

    /// Raw score logits, one f32 per row of the batch.
    pub fn forward(&self, batch: &ModelBatch) -> Result<Tensor> {
        let xs = self.embed_tokens.forward(&batch.input_ids)?;
        let layers = &self.layers;
        let xs = run_decoder(xs, layers.len(), &batch.pooled, &self.rope, |i, xs, cos, sin, queries| {
            layers[i].forward(xs, cos, sin, queries)
        })?;
        score_rows(&xs, &self.norm, &self.score)
    }
}
