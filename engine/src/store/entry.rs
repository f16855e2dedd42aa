//! One entry of the store: its key (model id, conversation key), its value (score, tokens,
//! truncated) and the checksum that keeps a flipped byte from being read back as a score.

use redb::TableDefinition;
use skyscore_core::{ConversationKey, RowScore};

use super::ModelId;

/// `model id (16 bytes) ++ conversation key (16 bytes)`, big-endian: one model's entries are
/// one contiguous key range. The value: score (f32), tokens (u32), truncated (u8), then a
/// checksum (the low 32 bits of xxh3 over key and value).
pub(super) const SCORES: TableDefinition<[u8; 32], [u8; 13]> = TableDefinition::new("scores_v2");
/// The table of stores written before values had checksums; moved into [`SCORES`] on open.
pub(super) const SCORES_V1: TableDefinition<[u8; 32], [u8; 9]> = TableDefinition::new("scores");
/// Model id → what it stands for (the fingerprint text: model, revision, template, dtype, ...).
pub(super) const MODELS: TableDefinition<[u8; 16], &str> = TableDefinition::new("models");

pub(super) fn key(model: &ModelId, conversation: ConversationKey) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..16].copy_from_slice(model);
    k[16..].copy_from_slice(&conversation.to_be_bytes());
    k
}

pub(super) fn checksum(key: &[u8; 32], value: &[u8]) -> [u8; 4] {
    let mut bytes = [0u8; 41];
    bytes[..32].copy_from_slice(key);
    bytes[32..32 + value.len()].copy_from_slice(value);
    (xxhash_rust::xxh3::xxh3_64(&bytes[..32 + value.len()]) as u32).to_le_bytes()
}

pub(super) fn encode_v1(r: &RowScore) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..4].copy_from_slice(&r.score.to_le_bytes());
    v[4..8].copy_from_slice(&r.tokens.to_le_bytes());
    v[8] = r.truncated as u8;
    v
}

pub(super) fn encode(key: &[u8; 32], r: &RowScore) -> [u8; 13] {
    with_checksum(key, encode_v1(r))
}

pub(super) fn with_checksum(key: &[u8; 32], v1: [u8; 9]) -> [u8; 13] {
    let mut v = [0u8; 13];
    v[..9].copy_from_slice(&v1);
    v[9..].copy_from_slice(&checksum(key, &v1));
    v
}

/// The store keeps what the model read; a row that was not truncated read all of itself.
/// `None` when the checksum does not match: the entry was damaged on disk.
pub(super) fn decode(key: &[u8; 32], v: [u8; 13]) -> Option<RowScore> {
    if v[9..] != checksum(key, &v[..9]) {
        return None;
    }
    let tokens = u32::from_le_bytes(v[4..8].try_into().expect("4 bytes"));
    let truncated = v[8] != 0;
    Some(RowScore {
        score: f32::from_le_bytes(v[..4].try_into().expect("4 bytes")),
        tokens,
        truncated,
        full_tokens: (!truncated).then_some(tokens),
    })
}
