//! Session settings of skyscore (`skyscore.*`), carried with every query: on a Ballista
//! cluster, only session settings travel from the client to the scheduler and the executors.

use std::any::Any;
use std::collections::BTreeMap;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::{config_err, Result};

/// `skyscore.*` session settings. Written by hand rather than with DataFusion's
/// `extensions_options!`, whose entries leave the `skyscore.` prefix out: Ballista sends a
/// session's entries to its executors by key, and unprefixed keys would not arrive.
#[derive(Debug, Clone, Default)]
pub struct SkyscoreOptions {
    /// The model the client expects the scoring functions to run, as a JSON object of facts
    /// (`skyscore.template_sha256`, `skyscore.dtype`, ...) that must equal the scorer's own
    /// metadata. Empty: no check (a local session runs its own model). Set by `skyscore sql
    /// --cluster`.
    pub expected_model: String,
}

const EXPECTED_MODEL: &str = "expected_model";
/// The full session key of the expected model (`skyscore.expected_model`).
pub const EXPECTED_MODEL_KEY: &str = "skyscore.expected_model";

impl ConfigExtension for SkyscoreOptions {
    const PREFIX: &'static str = "skyscore";
}

impl ExtensionOptions for SkyscoreOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            EXPECTED_MODEL => {
                self.expected_model = value.to_string();
                Ok(())
            }
            other => config_err!("unknown setting skyscore.{other} (known: skyscore.{EXPECTED_MODEL})"),
        }
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: EXPECTED_MODEL_KEY.to_string(),
            value: Some(self.expected_model.clone()),
            description: "The model facts (JSON) the scorer must state before it scores; empty: no check",
        }]
    }
}

/// The facts a query's session expects of the model, when it names any.
pub fn expected_model(config: &ConfigOptions) -> Option<&str> {
    let options = config.extensions.get::<SkyscoreOptions>()?;
    let expected = options.expected_model.trim();
    (!expected.is_empty()).then_some(expected)
}

/// The JSON form of `facts`, as `skyscore.expected_model` carries it.
pub fn expectation_json(facts: &[(String, String)]) -> String {
    let map: BTreeMap<&str, &str> = facts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    serde_json::to_string(&map).expect("a string map serializes")
}

/// Compares what a session expects with a scorer's metadata: `Err` lists every fact that
/// differs (or that the scorer does not state), with both values.
pub fn check_expectation(expected_json: &str, actual: &[(String, String)]) -> Result<(), String> {
    let expected: BTreeMap<String, String> = serde_json::from_str(expected_json)
        .map_err(|e| format!("skyscore.expected_model is not a JSON object of strings: {e}"))?;
    let actual: BTreeMap<&str, &str> = actual.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let differences: Vec<String> = expected
        .iter()
        .filter(|(k, v)| actual.get(k.as_str()) != Some(&v.as_str()))
        .map(|(k, v)| format!("{k}: expected {v}, here {}", actual.get(k.as_str()).unwrap_or(&"(not stated)")))
        .collect();
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matching_facts_pass_and_each_difference_is_named() {
        let mine = facts(&[("skyscore.dtype", "f32"), ("skyscore.max_length", "4096"), ("skyscore.model", "m")]);
        let expected = expectation_json(&facts(&[("skyscore.dtype", "f32"), ("skyscore.max_length", "4096")]));
        assert_eq!(check_expectation(&expected, &mine), Ok(()));

        let expected = expectation_json(&facts(&[("skyscore.dtype", "bf16"), ("skyscore.template_sha256", "ab")]));
        assert_eq!(
            check_expectation(&expected, &mine).unwrap_err(),
            "skyscore.dtype: expected bf16, here f32; skyscore.template_sha256: expected ab, here (not stated)"
        );
        assert!(check_expectation("not json", &mine).unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn the_setting_reads_from_session_options() {
        let mut config = ConfigOptions::new();
        assert_eq!(expected_model(&config), None);
        config.extensions.insert(SkyscoreOptions::default());
        assert_eq!(expected_model(&config), None);
        config.set("skyscore.expected_model", "{\"skyscore.dtype\":\"f32\"}").unwrap();
        assert_eq!(expected_model(&config), Some("{\"skyscore.dtype\":\"f32\"}"));
        assert!(config.set("skyscore.nothing", "1").is_err());
        // Entries carry the full key: that is how the setting travels to a cluster's executors.
        let entry = config.entries().into_iter().find(|e| e.key.starts_with("skyscore.")).unwrap();
        assert_eq!(entry.key, "skyscore.expected_model");
        let mut there = ConfigOptions::new();
        there.extensions.insert(SkyscoreOptions::default());
        there.set(&entry.key, entry.value.as_deref().unwrap()).unwrap();
        assert_eq!(expected_model(&there), expected_model(&config));
    }
}
