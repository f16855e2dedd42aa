//! Building blocks shared by the decoder architectures, one concept per file: how weights are
//! held and applied ([`linear`]), rotary tables ([`rope`]), the query rows a layer computes and
//! what each sees ([`queries`]), attention ([`attention`]), RMSNorm ([`norm`]), the gated MLP
//! ([`mlp`]), head splitting ([`heads`]), the decoder stack ([`decoder`]) and the
//! transformers-exact pooling rule with the score head ([`pooling`]). Everything works on a
//! right-padded batch `[batch, seq]`, where causal attention alone keeps padding out of every
//! real token's view.

mod attention;
mod decoder;
mod heads;
mod linear;
mod mlp;
mod norm;
mod pooling;
mod queries;
mod rope;

pub use attention::{attention, attention_in_blocks, AttentionPath, AttentionProducts, MAX_SCORE_ELEMENTS};
pub use decoder::run_decoder;
pub use heads::split_heads;
pub use linear::{LinearKind, Proj, TokenEmbedding};
pub use mlp::GatedMlp;
pub use norm::RmsNorm;
pub use pooling::{pooled_index, score_rows};
pub use queries::{causal_block, LivePositions, Packed, QueryRows};
pub use rope::{RopeParameters, RotaryEmbedding};
