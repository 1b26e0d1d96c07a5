//! What the benches that run the real binary share: their settings from the environment, the
//! alert they copy, the median they print.

use std::path::Path;

use anyhow::{bail, Context as _};

/// `name` from the environment as a positive number, `default` when it is not set.
pub fn env_number<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    default: T,
) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > T::default())
            .with_context(|| format!("{name} must be a positive number")),
        Err(_) => Ok(default),
    }
}

/// The alert: the MDE docs' example without its null fields and evidence (about 1.2 KB),
/// with `@ID@` where each copy's id goes.
pub fn alert_template() -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mde-alert-get-docs.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let serde_json::Value::Object(mut alert) = serde_json::from_str(&text)? else {
        bail!("{}: not an object", path.display());
    };
    alert.retain(|k, v| !v.is_null() && k != "evidence");
    alert.insert("id".into(), "@ID@".into());
    Ok(serde_json::to_string(&alert)?)
}

/// The middle value (the upper one of an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
