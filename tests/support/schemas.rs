//! Checks of the webhook bodies defender-bridge posts, against what the receivers publish.
//!
//! - Microsoft Teams, a Workflows webhook ("When a Teams webhook request is received" /
//!   "Post to a channel when a webhook request is received"): a message envelope holding an
//!   Adaptive Card, validated with Microsoft's own Adaptive Card 1.5 JSON schema
//!   (`tests/data/adaptive-card-1.5.schema.json`, from microsoft/AdaptiveCards, MIT). Teams
//!   renders Adaptive Card features up to 1.5: "Teams platform supports v1.5 or earlier of
//!   Adaptive Card features" (Cards reference,
//!   <https://learn.microsoft.com/en-us/microsoftteams/platform/task-modules-and-cards/cards/cards-reference>).
//! - Slack, an incoming webhook: Slack publishes no JSON schema for Block Kit, so
//!   [`slack_errors`] checks the documented rules of the blocks we post, one by one.
#![allow(dead_code)] // each test file uses a different part

use std::sync::OnceLock;

use serde_json::{json, Value};

/// The `$schema` of an Adaptive Card (an identifier, never fetched).
pub const ADAPTIVE_CARD_SCHEMA_ID: &str = "http://adaptivecards.io/schemas/adaptive-card.json";

/// The newest Adaptive Card version Teams renders (see the module comment).
pub const TEAMS_MAX_CARD_VERSION: (u32, u32) = (1, 5);

/// "The message size limit is 28 KB. When the size exceeds 28 KB, you receive an error."
/// (Create an Incoming Webhook,
/// <https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook>;
/// the Workflows trigger states the same). Read as 28,000 bytes of the whole JSON body, the
/// stricter reading of KB.
pub const TEAMS_MAX_BODY_BYTES: usize = 28_000;

/// The Adaptive Card 1.5 schema, compiled once. Its `$ref`s are all local (`#/definitions/…`),
/// and jsonschema is built without remote resolution: nothing is fetched.
fn adaptive_card_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let mut schema: Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/adaptive-card-1.5.schema.json"
        )))
        .expect("tests/data/adaptive-card-1.5.schema.json is JSON");
        // The root is `anyOf: [{allOf: [{$ref: AdaptiveCard}]}]`, one branch: the same as
        // `allOf: [{$ref: AdaptiveCard}]`, which reports the errors inside (with their paths)
        // where anyOf reports only that the whole card failed.
        let root_branch = json!([{"allOf": [{"$ref": "#/definitions/AdaptiveCard"}]}]);
        if let Some(root) = schema.as_object_mut() {
            if root.get("anyOf") == Some(&root_branch) {
                root.remove("anyOf");
                root.insert(
                    "allOf".into(),
                    json!([{"$ref": "#/definitions/AdaptiveCard"}]),
                );
            }
        }
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft6)
            .build(&schema)
            .unwrap_or_else(|e| panic!("the Adaptive Card 1.5 schema compiles: {e}"))
    })
}

/// Errors of one Adaptive Card against the 1.5 schema, each as `PATH: message`.
pub fn adaptive_card_errors(card: &Value) -> Vec<String> {
    adaptive_card_validator()
        .iter_errors(card)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// `"1.4"` as (1, 4).
fn card_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// What is wrong with a body for a Teams Workflows webhook; empty if nothing is.
///
/// The envelope is the one Microsoft documents for posting a card to the webhook:
/// `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive",
/// "contentUrl":null,"content":{…card…}}]}`. Each card must be a top-level Adaptive Card with a
/// `version` Teams renders (≤ 1.5), the `$schema` identifier if it has one, and must validate
/// against the 1.5 schema; the whole body must fit the 28 KB limit.
pub fn teams_errors(body: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(object) = body.as_object() else {
        return vec!["the body is not a JSON object".into()];
    };
    if object.get("type") != Some(&Value::from("message")) {
        errors.push(format!(
            "type: must be \"message\", is {}",
            object
                .get("type")
                .map_or("missing".into(), Value::to_string)
        ));
    }
    let size = serde_json::to_vec(body).map_or(0, |b| b.len());
    if size > TEAMS_MAX_BODY_BYTES {
        errors.push(format!(
            "the body is {size} bytes, Teams takes at most {TEAMS_MAX_BODY_BYTES}"
        ));
    }
    let attachments = match object.get("attachments").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a,
        Some(_) => {
            errors.push("attachments: empty".into());
            return errors;
        }
        None => {
            errors.push("attachments: missing or not an array".into());
            return errors;
        }
    };
    for (i, attachment) in attachments.iter().enumerate() {
        let at = format!("attachments[{i}]");
        let Some(attachment) = attachment.as_object() else {
            errors.push(format!("{at}: not an object"));
            continue;
        };
        if attachment.get("contentType")
            != Some(&Value::from("application/vnd.microsoft.card.adaptive"))
        {
            errors.push(format!(
                "{at}.contentType: must be \"application/vnd.microsoft.card.adaptive\", is {}",
                attachment
                    .get("contentType")
                    .map_or("missing".into(), Value::to_string)
            ));
        }
        if let Some(url) = attachment.get("contentUrl") {
            if !url.is_null() {
                errors.push(format!(
                    "{at}.contentUrl: must be null (the card is inline), is {url}"
                ));
            }
        }
        let Some(card) = attachment.get("content") else {
            errors.push(format!("{at}.content: missing"));
            continue;
        };
        if !card.is_object() {
            errors.push(format!("{at}.content: not an object"));
            continue;
        }
        if let Some(schema) = card.get("$schema") {
            if schema != ADAPTIVE_CARD_SCHEMA_ID {
                errors.push(format!(
                    "{at}.content.$schema: must be \"{ADAPTIVE_CARD_SCHEMA_ID}\", is {schema}"
                ));
            }
        }
        // The schema does not require `version`, but says it "*is* required for the
        // top-level card".
        match card.get("version").and_then(Value::as_str) {
            None => errors.push(format!("{at}.content.version: missing or not a string")),
            Some(v) => match card_version(v) {
                Some(version) if version <= TEAMS_MAX_CARD_VERSION => {}
                Some(_) => errors.push(format!(
                    "{at}.content.version: {v} is newer than Teams renders (1.5)"
                )),
                None => errors.push(format!("{at}.content.version: {v:?} is not MAJOR.MINOR")),
            },
        }
        for e in adaptive_card_errors(card) {
            errors.push(format!("{at}.content{e}"));
        }
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// Slack
// ---------------------------------------------------------------------------------------------

/// At most this many blocks in a message ("You can include up to 50 blocks in each message",
/// <https://api.slack.com/reference/block-kit/blocks>).
pub const SLACK_MAX_BLOCKS: usize = 50;

/// Slack "will truncate messages containing more than 40,000 characters"
/// (<https://api.slack.com/methods/chat.postMessage#truncating>).
pub const SLACK_MAX_TEXT: usize = 40_000;

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// An optional string field no longer than `max` characters.
fn check_str(errors: &mut Vec<String>, object: &Value, at: &str, name: &str, max: usize) {
    match object.get(name) {
        Some(Value::String(s)) if chars(s) > max => errors.push(format!(
            "{at}.{name}: {} characters, the limit is {max}",
            chars(s)
        )),
        None | Some(Value::String(_)) => {}
        Some(other) => errors.push(format!("{at}.{name}: not a string but {other}")),
    }
}

/// A text composition object (<https://api.slack.com/reference/block-kit/composition-objects#text>):
/// `type` plain_text or mrkdwn (or only `plain_text` if `plain_only`), `text` of 1 to `max`
/// characters, `emoji` (plain_text only) and `verbatim` (mrkdwn only) booleans.
fn check_text(
    errors: &mut Vec<String>,
    text: Option<&Value>,
    at: &str,
    max: usize,
    plain_only: bool,
) {
    let Some(text) = text else {
        errors.push(format!("{at}: missing"));
        return;
    };
    let Some(object) = text.as_object() else {
        errors.push(format!("{at}: not a text object but {text}"));
        return;
    };
    let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
    match (kind, plain_only) {
        ("plain_text", _) | ("mrkdwn", false) => {}
        _ => errors.push(format!(
            "{at}.type: must be {}, is {}",
            if plain_only {
                "plain_text"
            } else {
                "plain_text or mrkdwn"
            },
            object
                .get("type")
                .map_or("missing".into(), Value::to_string)
        )),
    }
    match object.get("text") {
        Some(Value::String(s)) if s.is_empty() => {
            errors.push(format!("{at}.text: empty (at least 1 character)"));
        }
        Some(Value::String(s)) if chars(s) > max => errors.push(format!(
            "{at}.text: {} characters, the limit is {max}",
            chars(s)
        )),
        Some(Value::String(_)) => {}
        Some(other) => errors.push(format!("{at}.text: not a string but {other}")),
        None => errors.push(format!("{at}.text: missing")),
    }
    for (field, only_for) in [("emoji", "plain_text"), ("verbatim", "mrkdwn")] {
        if let Some(v) = object.get(field) {
            if !v.is_boolean() {
                errors.push(format!("{at}.{field}: not a boolean but {v}"));
            } else if kind != only_for {
                errors.push(format!("{at}.{field}: only for {only_for}"));
            }
        }
    }
}

/// A button element (<https://api.slack.com/reference/block-kit/block-elements#button>):
/// `text` plain_text ≤ 75, `action_id` ≤ 255, `url` ≤ 3000, `value` ≤ 2000, `style` primary or
/// danger.
fn check_button(errors: &mut Vec<String>, button: &Value, at: &str) {
    check_text(errors, button.get("text"), &format!("{at}.text"), 75, true);
    check_str(errors, button, at, "action_id", 255);
    check_str(errors, button, at, "url", 3000);
    check_str(errors, button, at, "value", 2000);
    if let Some(style) = button.get("style") {
        if style != "primary" && style != "danger" {
            errors.push(format!("{at}.style: must be primary or danger, is {style}"));
        }
    }
}

/// An image element (<https://api.slack.com/reference/block-kit/block-elements#image>):
/// `alt_text` required, and `image_url` ≤ 3000 or a `slack_file`.
fn check_image(errors: &mut Vec<String>, image: &Value, at: &str) {
    match image.get("alt_text") {
        Some(Value::String(_)) => check_str(errors, image, at, "alt_text", 2000),
        _ => errors.push(format!("{at}.alt_text: missing or not a string")),
    }
    if image.get("image_url").is_none() && image.get("slack_file").is_none() {
        errors.push(format!("{at}: needs image_url or slack_file"));
    }
    check_str(errors, image, at, "image_url", 3000);
}

/// An element of an actions block or a section's accessory: buttons and images are checked,
/// other elements need a `type` only.
fn check_element(errors: &mut Vec<String>, element: &Value, at: &str) {
    match element.get("type").and_then(Value::as_str) {
        Some("button") => check_button(errors, element, at),
        Some("image") => check_image(errors, element, at),
        Some(_) => {}
        None => errors.push(format!("{at}.type: missing or not a string")),
    }
}

/// An array field with 1 to `max` items.
fn check_array<'a>(
    errors: &mut Vec<String>,
    object: &'a Value,
    at: &str,
    name: &str,
    max: usize,
) -> &'a [Value] {
    match object.get(name) {
        Some(Value::Array(items)) if items.is_empty() => {
            errors.push(format!("{at}.{name}: empty"));
            items
        }
        Some(Value::Array(items)) => {
            if items.len() > max {
                errors.push(format!(
                    "{at}.{name}: {} items, the limit is {max}",
                    items.len()
                ));
            }
            items
        }
        Some(other) => {
            errors.push(format!("{at}.{name}: not an array but {other}"));
            &[]
        }
        None => {
            errors.push(format!("{at}.{name}: missing"));
            &[]
        }
    }
}

/// What is wrong with a body for a Slack incoming webhook; empty if nothing is.
///
/// Slack publishes no JSON schema for Block Kit; these are the documented rules
/// (<https://api.slack.com/reference/block-kit/blocks>,
/// <https://api.slack.com/reference/block-kit/composition-objects>,
/// <https://api.slack.com/reference/block-kit/block-elements>) of the blocks defender-bridge
/// posts. The same limits are enforced by Slack's own SDK (python-slack-sdk
/// `slack_sdk/models/blocks`):
///
/// - `text`: the notification and fallback text, a non-empty string of at most 40,000
///   characters; `blocks`: at most 50, each with a unique `block_id` (≤ 255) if it has one;
/// - header: `text` plain_text, 1–150 characters;
/// - section: `text` (1–3000) and/or `fields` (1–10 text objects, each ≤ 2000); an
///   `accessory` element;
/// - context: `elements`, 1–10 text objects or image elements;
/// - divider: nothing else;
/// - actions: `elements`, 1–25 interactive elements; a button's `text` is plain_text ≤ 75, its
///   `url` ≤ 3000, `value` ≤ 2000, `action_id` ≤ 255, `style` primary or danger.
///
/// Any other block type is reported: it is not one of ours and is not checked.
pub fn slack_errors(body: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if !body.is_object() {
        return vec!["the body is not a JSON object".into()];
    }
    match body.get("text") {
        Some(Value::String(s)) if s.trim().is_empty() => errors.push("text: empty".into()),
        Some(Value::String(s)) if chars(s) > SLACK_MAX_TEXT => errors.push(format!(
            "text: {} characters, Slack truncates beyond {SLACK_MAX_TEXT}",
            chars(s)
        )),
        Some(Value::String(_)) => {}
        Some(other) => errors.push(format!("text: not a string but {other}")),
        None => errors.push("text: missing (the notification and fallback text)".into()),
    }
    let blocks = match body.get("blocks") {
        None => return errors,
        Some(Value::Array(blocks)) => blocks,
        Some(other) => {
            errors.push(format!("blocks: not an array but {other}"));
            return errors;
        }
    };
    if blocks.len() > SLACK_MAX_BLOCKS {
        errors.push(format!(
            "blocks: {} blocks, the limit is {SLACK_MAX_BLOCKS}",
            blocks.len()
        ));
    }
    let mut block_ids = std::collections::BTreeSet::new();
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("blocks[{i}]");
        if !block.is_object() {
            errors.push(format!("{at}: not an object"));
            continue;
        }
        check_str(&mut errors, block, &at, "block_id", 255);
        if let Some(id) = block.get("block_id").and_then(Value::as_str) {
            if !block_ids.insert(id.to_string()) {
                errors.push(format!(
                    "{at}.block_id: {id:?} is not unique in the message"
                ));
            }
        }
        match block.get("type").and_then(Value::as_str) {
            Some("header") => {
                check_text(
                    &mut errors,
                    block.get("text"),
                    &format!("{at}.text"),
                    150,
                    true,
                );
            }
            Some("section") => {
                if block.get("text").is_none() && block.get("fields").is_none() {
                    errors.push(format!("{at}: a section needs text or fields"));
                }
                if block.get("text").is_some() {
                    check_text(
                        &mut errors,
                        block.get("text"),
                        &format!("{at}.text"),
                        3000,
                        false,
                    );
                }
                if block.get("fields").is_some() {
                    let fields = check_array(&mut errors, block, &at, "fields", 10);
                    for (j, field) in fields.iter().enumerate() {
                        check_text(
                            &mut errors,
                            Some(field),
                            &format!("{at}.fields[{j}]"),
                            2000,
                            false,
                        );
                    }
                }
                if let Some(accessory) = block.get("accessory") {
                    check_element(&mut errors, accessory, &format!("{at}.accessory"));
                }
            }
            Some("context") => {
                let elements = check_array(&mut errors, block, &at, "elements", 10);
                for (j, element) in elements.iter().enumerate() {
                    let at = format!("{at}.elements[{j}]");
                    match element.get("type").and_then(Value::as_str) {
                        Some("image") => check_image(&mut errors, element, &at),
                        _ => check_text(&mut errors, Some(element), &at, 3000, false),
                    }
                }
            }
            Some("divider") => {}
            Some("actions") => {
                let elements = check_array(&mut errors, block, &at, "elements", 25);
                for (j, element) in elements.iter().enumerate() {
                    check_element(&mut errors, element, &format!("{at}.elements[{j}]"));
                }
            }
            Some(other) => errors.push(format!(
                "{at}.type: {other:?} is not a block defender-bridge posts (header, section, \
                 context, divider, actions), so it is not checked"
            )),
            None => errors.push(format!("{at}.type: missing or not a string")),
        }
    }
    errors
}
