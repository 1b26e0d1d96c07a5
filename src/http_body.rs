//! Reading HTTP answers with a bound: a page is refused when it is larger than its limit, and of
//! an answer that is only shown (an error, a health check) the first bytes are enough. A
//! request's timeout bounds its time, not the bytes a fast server streams in it (issue 8 §11:
//! a page or an error body was read whole, however large).

/// Why [`read_limited`] gave no body.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

/// The whole body, refused once it is larger than `limit` bytes, before it is all in memory.
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// At most the first `limit` bytes of the body; the rest is not read (the connection is then
/// not used again). A body that breaks off gives what came before.
pub async fn read_head(mut resp: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut head = Vec::new();
    while head.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - head.len();
                head.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    head
}

/// The first non-blank line of an answer, without control characters, at most 200 characters:
/// what a log line or an error shows of it.
pub fn first_line(body: &str) -> String {
    body.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

/// All of an answer on one line: each run of whitespace and control characters as one space, at
/// most `max` characters. For a body whose first line says nothing (an HTML error page starts
/// with `<html>`).
pub fn one_line(body: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = 0;
    let words = body.split(|c: char| c.is_whitespace() || c.is_control());
    for word in words.filter(|w| !w.is_empty()) {
        for c in (!out.is_empty())
            .then_some(' ')
            .into_iter()
            .chain(word.chars())
        {
            if chars == max {
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_joins_lines_and_drops_control_characters() {
        for (body, max, expected) in [
            (
                "<html>\r\n<head>\t<title>502</title>",
                300,
                "<html> <head> <title>502</title>",
            ),
            ("  a\u{1b}[1m  b \n", 300, "a [1m b"),
            ("abc def", 5, "abc d"),
            ("abc def", 3, "abc"),
            ("é ü", 2, "é "),
            ("\r\n\t ", 10, ""),
        ] {
            assert_eq!(one_line(body, max), expected, "{body:?}");
        }
    }
}
