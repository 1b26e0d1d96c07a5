//! Format files are checked when they are loaded: each kind of mistake is an error that names
//! the file, the line and what is wrong.

use defender_bridge::format::{FormatError, Formatter, BUILTIN};

const HEAD: &str = r#"syntax = "cef"

[header]
vendor = { value = "V" }
product = { value = "P" }
version = { value = "1" }
class_id = { path = "detectorId" }
name = { path = "title" }
severity = { path = "severity", table = "sev" }

[tables.sev]
high = 8
"*" = 0
"#;

fn err(src: &str) -> FormatError {
    match Formatter::from_toml("my.toml", src) {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => e,
    }
}

#[test]
fn every_builtin_compiles() {
    for (name, src) in BUILTIN {
        Formatter::from_toml(name, src).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn mistakes_name_their_line() {
    // (what is appended to HEAD, or a whole file when it starts with "!", the line, a part of
    // the message)
    let cases: &[(&str, usize, &str)] = &[
        ("[[field]]\nkey = \"msg\"\npath = \"titel\"\n", 17, "unknown path \"titel\""),
        ("[[field]]\nkey = \"msg\"\npath = \"file.sha512\"\n", 17, "`file.` takes fileName"),
        ("[[field]]\nkey = \"msg\"\npath = \"title\"\ncolour = \"red\"\n", 18, "unknown field `colour`"),
        ("[[field]]\nkey = \"cs1\"\npath = \"title\"\n", 16, "\"cs1\" needs a label"),
        ("[[field]]\nkey = \"msg\"\nlabel = \"M\"\npath = \"title\"\n", 17, "\"msg\" takes no label"),
        ("[[field]]\nkey = \"cs1Label\"\nvalue = \"x\"\n", 16, "use label = "),
        ("[[field]]\nkey = \"ahost\"\nvalue = \"x\"\n", 16, "producers must not send it"),
        ("[[field]]\nkey = \"colour\"\nvalue = \"x\"\n", 16, "not a key of the CEF dictionary"),
        ("[[field]]\nkey = \"src\"\npath = \"ip.ipAddress\"\n\n[[field]]\nkey = \"src\"\npath = \"ip.ipAddress\"\n", 20, "key \"src\" appears twice"),
        ("[[field]]\nkey = \"rt\"\npath = \"createdDateTime\"\n", 16, "is a CEF timestamp"),
        ("[[field]]\nkey = \"msg\"\npath = \"title\"\nconvert = \"epoch_us\"\n", 18, "convert is \"epoch_us\""),
        ("[[field]]\nkey = \"msg\"\npath = \"title\"\ntable = \"nope\"\n", 18, "no table named \"nope\""),
        ("[[field]]\nkey = \"msg\"\npath = \"title\"\nevidence = \"all\"\n", 18, "applies only to evidence paths"),
        ("[[field]]\nkey = \"fname\"\npath = \"file.fileName\"\nevidence = \"current\"\n", 18, "needs records = \"evidence\""),
        ("[[field]]\nkey = \"msg\"\npath = \"evidence.verdict\"\n", 17, "`evidence.` paths need records"),
        ("[[field]]\nkey = \"msg\"\npath = \"title\"\nmax_length = 5000\n", 18, "must be between 1 and 1023"),
        ("[[field]]\nkey = \"msg\"\npath = \"title\"\nimportance = 11\n", 18, "importance is 1"),
        ("[[field]]\nkey = \"msg\"\npath = \"title\"\nvalue = \"x\"\n", 18, "either path or value"),
        ("[[field]]\nkey = \"msg\"\n", 15, "needs a path or a value"),
        ("[[field]]\npath = \"title\"\n", 15, "needs a key"),
        ("[tables.unused]\na = 1\n", 15, "table \"unused\" is never used"),
        ("!syntax = \"xml\"\n", 1, "syntax is \"xml\""),
        ("!syntax = \"cef\"\nrecords = \"page\"\n", 2, "records is \"page\""),
        ("!syntax = \"cef\"\n[cef]\nheader_pipes = \"drop\"\n", 3, "header_pipes is \"drop\""),
        ("!syntax = \"cef\"\n[header]\nvendor = { value = \"V\" }\nseverity = { value = \"V\" }\ncolour = { value = \"x\" }\n", 5, "unknown header field \"colour\""),
        ("!syntax = \"cef\"\n[header]\nvendor = { value = \"V\" }\nproduct = { value = \"P\" }\nversion = { value = \"1\" }\nclass_id = { value = \"c\" }\nname = { value = \"n\" }\nseverity = { value = \"11\" }\n", 8, "CEF severity (formats.md §1.3) must be 0-10"),
        ("!syntax = \"cef\"\n[header]\nvendor = { value = \"V\" }\nproduct = { value = \"P\" }\nversion = { value = \"1\" }\nclass_id = { value = \"c\" }\nname = { value = \"n\" }\nseverity = { path = \"severity\", table = \"s\" }\n[tables.s]\nhigh = 12\n\"*\" = 0\n", 9, "table value for \"high\" is \"12\""),
        ("!syntax = \"cef\"\n[header]\nvendor = { value = \"V\" }\nproduct = { value = \"P\" }\nversion = { value = \"1\" }\nclass_id = { value = \"c\" }\nname = { value = \"n\" }\nseverity = { path = \"severity\", table = \"s\" }\n[tables.s]\nhigh = 8\n", 9, "needs a \"*\" entry"),
        ("!syntax = \"leef\"\n[leef]\nversion = \"3.0\"\n", 3, "LEEF version \"3.0\""),
        ("!syntax = \"leef\"\n[leef]\nversion = \"2.0\"\ndelimiter = \"=\"\n", 4, "delimiter \"=\""),
        ("!syntax = \"leef\"\n[leef]\nversion = \"2.0\"\n[header]\nvendor = { value = \"V\" }\nproduct = { value = \"P\" }\nversion = { value = \"1\" }\nevent_id = { value = \"e\" }\n[[field]]\nkey = \"colour\"\nvalue = \"x\"\n", 10, "not a predefined LEEF attribute"),
        ("!syntax = \"leef\"\n[leef]\nversion = \"2.0\"\n[header]\nvendor = { value = \"V\" }\nproduct = { value = \"P\" }\nversion = { value = \"1\" }\nevent_id = { value = \"e\" }\n[[field]]\nkey = \"sev\"\npath = \"severity\"\n", 9, "LEEF sev (formats.md §2.3) needs a table"),
        ("!syntax = \"leef\"\n[leef]\nversion = \"2.0\"\n[header]\nvendor = { value = \"V\" }\nproduct = { value = \"P\" }\nversion = { value = \"1\" }\nevent_id = { value = \"e\" }\n[[field]]\nkey = \"devTime\"\npath = \"createdDateTime\"\n", 10, "devTime needs convert"),
        ("!syntax = \"json\"\n[[field]]\nkey = \"a\"\nlabel = \"x\"\npath = \"id\"\n", 4, "labels are for CEF keys"),
        ("!syntax = \"cef\"\nthis is not toml\n", 2, "key with no value"),
    ];
    let mut wrong = Vec::new();
    for (snippet, line, message) in cases {
        let src = match snippet.strip_prefix('!') {
            Some(whole) => whole.to_string(),
            None => format!("{HEAD}\n{snippet}"),
        };
        let e = err(&src);
        if e.origin != "my.toml" || !e.message.contains(message) || e.line != Some(*line) {
            wrong.push(format!(
                "{snippet:?}\n  want line {line} with {message:?}\n  got  {e}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_correct_user_file_loads() {
    let src = format!(
        "{HEAD}\n[[field]]\nkey = \"cs1\"\nlabel = \"Tenant\"\npath = \"tenant.name\"\nfallback = [\"tenantId\"]\n\n[[field]]\nkey = \"MyVendorKey\"\ncustom = true\npath = \"file.sha256\"\nevidence = \"all\"\njoin = \" \"\n"
    );
    let f = Formatter::from_toml("/etc/defender-bridge/formats/mine.toml", &src).unwrap();
    assert_eq!(f.name(), "mine");
    assert_eq!(f.plan().fields.len(), 2);
}
