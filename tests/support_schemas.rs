//! The body checks of tests/support/schemas.rs: Microsoft's own sample cards pass the Teams
//! check and broken ones fail it with the place named; Slack's SDK fixtures pass the Slack
//! check and every documented limit is enforced at its boundary. A check that passes
//! everything would make the notification tests worthless; these show it does not.

mod support;

use serde_json::{json, Value};
use support::schemas::{adaptive_card_errors, slack_errors, teams_errors};

fn data(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Workflows envelope around a card.
fn teams(card: Value) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }]
    })
}

/// A card like the one defender-bridge means to post: heading, facts, columns, a link.
fn alert_card() -> Value {
    json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": "High: Ransomware detected", "weight": "Bolder",
             "size": "Medium", "wrap": true, "style": "heading"},
            {"type": "ColumnSet", "columns": [
                {"type": "Column", "width": "auto",
                 "items": [{"type": "TextBlock", "text": "Contoso", "isSubtle": true}]},
                {"type": "Column", "width": "stretch",
                 "items": [{"type": "TextBlock", "text": "3 alerts", "wrap": true}]}
            ]},
            {"type": "FactSet", "facts": [
                {"title": "Severity", "value": "High"},
                {"title": "Device", "value": "host-17.contoso.local"},
                {"title": "MITRE", "value": "T1486, T1059.001"}
            ]}
        ],
        "actions": [
            {"type": "Action.OpenUrl", "title": "Open in Defender",
             "url": "https://security.microsoft.com/alerts/da638?tid=0000-1111"}
        ]
    })
}

#[test]
fn microsoft_sample_cards_pass() {
    for name in [
        "adaptive-card-sample-activity-update.json",
        "adaptive-card-sample-restaurant.json",
    ] {
        let card = data(name);
        assert_eq!(adaptive_card_errors(&card), Vec::<String>::new(), "{name}");
        assert_eq!(teams_errors(&teams(card)), Vec::<String>::new(), "{name}");
    }
    assert_eq!(teams_errors(&teams(alert_card())), Vec::<String>::new());
}

/// The one error of a card broken at `path`: the element there matches no element type of
/// the schema (the schema's elements are an anyOf of every type).
fn assert_broken_at(card: Value, path: &str) {
    let errors = teams_errors(&teams(card));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let prefix = format!("attachments[0].content{path}: ");
    assert!(
        errors[0].starts_with(&prefix)
            && errors[0]
                .ends_with("is not valid under any of the schemas listed in the 'anyOf' keyword"),
        "{errors:?}"
    );
}

#[test]
fn broken_cards_fail_at_the_broken_place() {
    let mut card = alert_card();
    card["body"][0]["type"] = "TextBlok".into();
    assert_broken_at(card, "/body/0");

    let mut card = alert_card();
    card["body"][2]["facts"][1] = json!({"title": "Device"});
    assert_broken_at(card, "/body/2");

    // An unknown property where the schema forbids extras, and a wrong value type.
    let mut card = alert_card();
    card["actions"][0]["href"] = "https://example.com".into();
    assert_broken_at(card, "/actions/0");
    let mut card = alert_card();
    card["body"][0]["wrap"] = "yes".into();
    assert_broken_at(card, "/body/0");

    // Outside an element, the error names the property itself.
    assert_eq!(
        adaptive_card_errors(
            &json!({"type": "AdaptiveCard", "version": "1.4", "body": [],
                                     "fallbackText": 3})
        ),
        ["/fallbackText: 3 is not of type \"string\""]
    );
}

#[test]
fn the_teams_envelope_is_checked() {
    let mut card = alert_card();
    card["version"] = "1.6".into();
    assert_eq!(
        teams_errors(&teams(card)),
        ["attachments[0].content.version: 1.6 is newer than Teams renders (1.5)"]
    );
    let mut card = alert_card();
    card.as_object_mut().expect("object").remove("version");
    assert_eq!(
        teams_errors(&teams(card)),
        ["attachments[0].content.version: missing or not a string"]
    );
    let mut card = alert_card();
    card["$schema"] = "https://adaptivecards.io/schemas/adaptive-card.json".into();
    assert_eq!(
        teams_errors(&teams(card)),
        ["attachments[0].content.$schema: must be \"http://adaptivecards.io/schemas/adaptive-card.json\", is \"https://adaptivecards.io/schemas/adaptive-card.json\""]
    );

    let mut body = teams(alert_card());
    body["type"] = "Message".into();
    body["attachments"][0]["contentType"] = "application/json".into();
    body["attachments"][0]["contentUrl"] = "https://example.com/card.json".into();
    assert_eq!(
        teams_errors(&body),
        [
            "type: must be \"message\", is \"Message\"",
            "attachments[0].contentType: must be \"application/vnd.microsoft.card.adaptive\", is \"application/json\"",
            "attachments[0].contentUrl: must be null (the card is inline), is \"https://example.com/card.json\"",
        ]
    );
    assert_eq!(
        teams_errors(&json!({"type": "message", "attachments": []})),
        ["attachments: empty"]
    );
    assert_eq!(
        teams_errors(&json!({"type": "message"})),
        ["attachments: missing or not an array"]
    );
    assert_eq!(teams_errors(&json!([])), ["the body is not a JSON object"]);

    // A card past 28 KB.
    let mut card = alert_card();
    card["body"][0]["text"] = "x".repeat(28_000).into();
    let errors = teams_errors(&teams(card));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("Teams takes at most 28000"),
        "{errors:?}"
    );
}

/// A message with the blocks of a Slack SDK fixture (a view's blocks are message blocks).
fn slack_fixture(name: &str) -> Value {
    let view = data(name);
    json!({"text": "fallback", "blocks": view["blocks"]})
}

#[test]
fn slack_sdk_fixtures_pass() {
    for name in [
        "slack-sdk-view-home-002.json",
        "slack-sdk-view-home-004.json",
        "slack-sdk-view-modal-005.json",
    ] {
        assert_eq!(
            slack_errors(&slack_fixture(name)),
            Vec::<String>::new(),
            "{name}"
        );
    }
    // python-slack-sdk's HeaderBlock document test (tests/slack_sdk/models/test_blocks.py).
    let header = json!({"type": "header", "block_id": "budget-header",
                        "text": {"type": "plain_text", "text": "Budget Performance"}});
    assert_eq!(
        slack_errors(&json!({"text": "x", "blocks": [header]})),
        Vec::<String>::new()
    );
}

/// A message like the one defender-bridge means to post, every limit at its maximum.
fn alert_message() -> Value {
    let field = |i: usize| json!({"type": "mrkdwn", "text": format!("*{i}*{}", "f".repeat(1997))});
    json!({
        "text": "High: Ransomware detected at Contoso",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "h".repeat(150), "emoji": true}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "s".repeat(3000)},
             "fields": (0..10).map(field).collect::<Vec<_>>()},
            {"type": "context", "elements": (0..10)
                .map(|i| json!({"type": "mrkdwn", "text": format!("c{i}")}))
                .collect::<Vec<_>>()},
            {"type": "divider"},
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "b".repeat(75)},
                 "url": format!("https://security.microsoft.com/{}", "u".repeat(3000 - 31)),
                 "style": "primary"}
            ]}
        ]
    })
}

#[test]
fn slack_limits_are_enforced_at_their_boundaries() {
    assert_eq!(slack_errors(&alert_message()), Vec::<String>::new());

    let over = |edit: &dyn Fn(&mut Value)| {
        let mut m = alert_message();
        edit(&mut m);
        slack_errors(&m)
    };
    assert_eq!(
        over(&|m| m["blocks"][0]["text"]["text"] = "h".repeat(151).into()),
        ["blocks[0].text.text: 151 characters, the limit is 150"]
    );
    assert_eq!(
        over(&|m| m["blocks"][0]["text"]["type"] = "mrkdwn".into()),
        [
            "blocks[0].text.type: must be plain_text, is \"mrkdwn\"",
            "blocks[0].text.emoji: only for plain_text"
        ]
    );
    assert_eq!(
        over(&|m| m["blocks"][1]["text"]["text"] = "s".repeat(3001).into()),
        ["blocks[1].text.text: 3001 characters, the limit is 3000"]
    );
    assert_eq!(
        over(&|m| m["blocks"][1]["fields"][3]["text"] = "é".repeat(2001).into()),
        ["blocks[1].fields[3].text: 2001 characters, the limit is 2000"]
    );
    assert_eq!(
        over(&|m| {
            let extra = m["blocks"][1]["fields"][0].clone();
            m["blocks"][1]["fields"]
                .as_array_mut()
                .expect("fields")
                .push(extra);
        }),
        ["blocks[1].fields: 11 items, the limit is 10"]
    );
    assert_eq!(
        over(&|m| {
            let b = m["blocks"][1].as_object_mut().expect("section");
            b.remove("text");
            b.remove("fields");
        }),
        ["blocks[1]: a section needs text or fields"]
    );
    assert_eq!(
        over(&|m| m["blocks"][2]["elements"]
            .as_array_mut()
            .expect("elements")
            .push(json!({"type": "plain_text", "text": "11th"}))),
        ["blocks[2].elements: 11 items, the limit is 10"]
    );
    assert_eq!(
        over(&|m| m["blocks"][4]["elements"][0]["text"]["text"] = "b".repeat(76).into()),
        ["blocks[4].elements[0].text.text: 76 characters, the limit is 75"]
    );
    assert_eq!(
        over(&|m| m["blocks"][4]["elements"][0]["url"] =
            format!("https://security.microsoft.com/{}", "u".repeat(3000 - 30)).into()),
        ["blocks[4].elements[0].url: 3001 characters, the limit is 3000"]
    );
    assert_eq!(
        over(&|m| m["blocks"][4]["elements"][0]["style"] = "secondary".into()),
        ["blocks[4].elements[0].style: must be primary or danger, is \"secondary\""]
    );
    assert_eq!(
        over(&|m| m["blocks"][3]["type"] = "markdown".into()),
        ["blocks[3].type: \"markdown\" is not a block defender-bridge posts (header, section, context, divider, actions), so it is not checked"]
    );
    assert_eq!(
        over(&|m| {
            m["blocks"][0]["block_id"] = "same".into();
            m["blocks"][3]["block_id"] = "same".into();
        }),
        ["blocks[3].block_id: \"same\" is not unique in the message"]
    );
    assert_eq!(
        over(&|m| m["blocks"][1]["text"]["text"] = "".into()),
        ["blocks[1].text.text: empty (at least 1 character)"]
    );
    assert_eq!(
        over(&|m| {
            m.as_object_mut().expect("message").remove("text");
        }),
        ["text: missing (the notification and fallback text)"]
    );
    assert_eq!(
        over(&|m| m["text"] = "t".repeat(40_001).into()),
        ["text: 40001 characters, Slack truncates beyond 40000"]
    );
    let fifty_one = {
        let mut m = alert_message();
        m["blocks"] = (0..51).map(|_| json!({"type": "divider"})).collect();
        slack_errors(&m)
    };
    assert_eq!(fifty_one, ["blocks: 51 blocks, the limit is 50"]);
    let fifty = {
        let mut m = alert_message();
        m["blocks"] = (0..50).map(|_| json!({"type": "divider"})).collect();
        slack_errors(&m)
    };
    assert_eq!(fifty, Vec::<String>::new());
}

#[test]
fn broken_slack_fixtures_fail() {
    // Slack's own fixture with a button label past 75 and a header made of mrkdwn.
    let mut m = slack_fixture("slack-sdk-view-home-002.json");
    m["blocks"][1]["elements"][0]["text"]["text"] = "x".repeat(80).into();
    m["blocks"][0]["type"] = "header".into();
    assert_eq!(
        slack_errors(&m),
        [
            "blocks[0].text.type: must be plain_text, is \"mrkdwn\"",
            "blocks[1].elements[0].text.text: 80 characters, the limit is 75",
        ]
    );
    // An image in a context block without alt_text.
    let mut m = slack_fixture("slack-sdk-view-home-004.json");
    m["blocks"][3]["elements"][0]
        .as_object_mut()
        .expect("image")
        .remove("alt_text");
    assert_eq!(
        slack_errors(&m),
        ["blocks[3].elements[0].alt_text: missing or not a string"]
    );
}
