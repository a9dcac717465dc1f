//! URLs and answers as they may be shown: in errors, logs, summaries, `check` and the state
//! (DESIGN §9.8).
//!
//! A URL from the configuration or from a server (a `Location`, a `next` page) may carry
//! credentials: `user:password@`, or a query parameter such as `?token=` or `?password=`
//! (which sqlx honours for databases). Every place that shows a URL shows `redact_url` of it,
//! so that there is one rule to review.

/// What stands in for a hidden value.
const HIDDEN: &str = "***";

/// Parts of parameter names that suggest a secret (matched case-insensitively, anywhere in the
/// name): `password`, `sslpassword`, `pwd`, `access_token`, `api_key`, `client_secret`,
/// `X-Amz-Signature`, `sig`, `auth`, `credential`, `session`... Hiding a harmless value by
/// mistake costs little; showing a secret cannot be undone.
const SECRET_NAME_PARTS: &[&str] =
    &["pass", "pwd", "token", "secret", "key", "sig", "auth", "cred", "session", "private", "jwt"];

/// `url` with its userinfo replaced by `***` and the value of every parameter whose name
/// suggests a secret (in the query, the fragment, or a `key=value` connection string)
/// replaced by `***`. Works on the text, not a parsed URL, so that what cannot be parsed
/// (a malformed URL in a config error, a libpq connection string) is hidden too.
pub fn redact_url(url: &str) -> String {
    // Userinfo first, on the whole text: a password may hold `#`, `?` or `/` unencoded.
    let url = hide_userinfo(url);
    let (rest, fragment) = match url.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (url.as_str(), None),
    };
    let mut out = match rest.split_once('?') {
        Some((base, query)) => format!("{base}?{}", hide_params(query, '&')),
        None if !rest.contains("://") && rest.contains('=') => hide_params(rest, ' '),
        None => rest.to_string(),
    };
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(&hide_params(f, '&'));
    }
    out
}

/// `scheme://user:password@host/path` as `scheme://***@host/path`. The userinfo is what comes
/// before the last `@` of the authority (up to the first `/`, `?` or `#`); with no `@` there, a
/// `user:` whose text is not a port means a password holding one of those unencoded, which
/// runs to the next `@`.
fn hide_userinfo(url: &str) -> String {
    let Some((scheme, after)) = url.split_once("://") else { return url.to_string() };
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let at = match after[..authority_end].rfind('@') {
        Some(at) => Some(at),
        None => {
            let broken_password = after[..authority_end]
                .split_once(':')
                .is_some_and(|(_, rest)| !rest.is_empty() && !rest.bytes().all(|b| b.is_ascii_digit()));
            broken_password.then(|| after[authority_end..].find('@').map(|i| authority_end + i)).flatten()
        }
    };
    match at {
        Some(at) => format!("{scheme}://{HIDDEN}{}", &after[at..]),
        None => url.to_string(),
    }
}

/// `name=value` pairs separated by `separator`, with secret values hidden.
fn hide_params(params: &str, separator: char) -> String {
    let hide = |pair: &str| match pair.split_once('=') {
        Some((name, _)) if is_secret_name(name) => format!("{name}={HIDDEN}"),
        _ => pair.to_string(),
    };
    params.split(separator).map(hide).collect::<Vec<_>>().join(&separator.to_string())
}

/// Whether a parameter name suggests a secret (`%5F` and the like decoded first).
fn is_secret_name(name: &str) -> bool {
    let decoded = percent_decode(name).to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| decoded.contains(part))
}

/// `%XX` escapes decoded (enough to read a parameter name; invalid escapes stay as they are).
fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("{s}=").as_bytes()).next().map(|(k, _)| k.into_owned()).unwrap_or_default()
}

/// `text` with every one of `secrets` replaced by `***`: for what a server sends back, which
/// may echo the credentials it was sent (a write key, its Basic form, a token), as sent or
/// escaped in any of the ways a URL, a JSON string or a URL-safe base64 may escape them.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let patterns: Vec<String> = secrets.iter().filter(|s| s.len() >= 4).map(|s| echoed(s)).collect();
    if patterns.is_empty() {
        return text.to_string();
    }
    match regex::Regex::new(&patterns.join("|")) {
        Ok(echoes) => echoes.replace_all(text, HIDDEN).into_owned(),
        // Past the regex's size limit (a huge secret): as it was sent, at least.
        Err(_) => secrets.iter().filter(|s| s.len() >= 4).fold(text.to_string(), |t, s| t.replace(s.as_str(), HIDDEN)),
    }
}

/// A pattern matching `secret` however a server may echo it: each character as it is,
/// percent-encoded (either case of hex), `\uXXXX`-escaped (either case), JSON-escaped (`\/`,
/// `\"`, `\\`), a space as `+`, and the URL-safe base64 alphabet (`-`, `_`, padding left out).
fn echoed(secret: &str) -> String {
    let padding = secret.len() - secret.trim_end_matches('=').len();
    let chars: Vec<char> = secret.chars().collect();
    let mut pattern = String::from("(?:");
    for (i, c) in chars.iter().enumerate() {
        let mut forms = Vec::new();
        let mut utf8 = [0; 4];
        forms.push(c.encode_utf8(&mut utf8).bytes().map(|b| format!("%{b:02X}")).collect());
        forms.extend(c.encode_utf16(&mut [0; 2]).iter().map(|u| format!("\\\\u{u:04X}")).reduce(|a, b| a + &b));
        forms.extend(
            match c {
                '/' => vec![r"\\/", "_"],
                '"' => vec![r#"\\""#],
                '\\' => vec![r"\\\\"],
                ' ' => vec![r"\+"],
                '+' => vec!["-"],
                _ => vec![],
            }
            .into_iter()
            .map(str::to_string),
        );
        let optional = if i >= chars.len() - padding { "?" } else { "" };
        // The character itself exactly; its escapes in either case of hex.
        pattern.push_str(&format!("(?:{}|(?i:{})){optional}", regex::escape(&c.to_string()), forms.join("|")));
    }
    pattern.push(')');
    pattern
}

/// The secrets a request to `url` carries, as a server might echo them: the userinfo's
/// password (as written and decoded, and the `user:password` Basic credentials reqwest makes of
/// it) and the value of every parameter named like a secret. For `scrub`.
pub fn url_secrets(url: &url::Url) -> Vec<String> {
    let mut secrets = Vec::new();
    let user = percent_decode_value(url.username());
    let password = url.password().map(|p| (p.to_string(), percent_decode_value(p)));
    // A token may be the whole userinfo, as the user name: that is a secret too.
    if !user.is_empty() || password.is_some() {
        let decoded = password.as_ref().map(|(_, d)| d.as_str()).unwrap_or("");
        secrets.push(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{decoded}")));
        secrets.extend([url.username().to_string(), user]);
    }
    if let Some((written, decoded)) = password {
        secrets.extend([written, decoded]);
    }
    // As written and decoded: a server may echo either.
    for pair in url.query().unwrap_or("").split('&') {
        if let Some((_, value)) = pair.split_once('=').filter(|(name, _)| is_secret_name(name)) {
            secrets.extend([value.to_string(), percent_decode_value(value)]);
        }
    }
    secrets
}

/// The secrets of an `Authorization` value: the whole value, its credentials without the
/// scheme, and what Basic credentials decode to.
pub fn header_secrets(value: &str) -> Vec<String> {
    let mut secrets = vec![value.to_string()];
    if let Some((scheme, credentials)) = value.trim().split_once(' ') {
        secrets.push(credentials.trim().to_string());
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, credentials.trim());
            if let Some(text) = decoded.ok().and_then(|d| String::from_utf8(d).ok()) {
                secrets.extend(text.split_once(':').map(|(_, password)| password.to_string()));
                secrets.push(text);
            }
        }
    }
    secrets
}

/// A percent-encoded value decoded (invalid UTF-8 replaced).
fn percent_decode_value(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{header_secrets, redact_url, scrub, url_secrets};

    #[test]
    fn a_secret_echoed_url_encoded_or_json_escaped_is_scrubbed() {
        // Review finding: a write key 'AbC/dEf+Gh=' echoed as 'AbC/dEf%2BGh%3D' reached
        // last_error and the logs; so did a JSON-escaped echo of a key with '"', '\\' or é.
        let key = "AbC/dEf+Gh= \"q\\é".to_string();
        let echoes = [
            "AbC%2FdEf%2BGh%3D+%22q%5C%C3%A9",
            "AbC%2FdEf%2BGh%3D%20%22q%5C%C3%A9",
            "AbC/dEf%2BGh%3D%20%22q%5C%C3%A9",
            r#"{"key":"AbC/dEf+Gh= \"q\\é"}"#,
            r#"{"key":"AbC/dEf+Gh= \"q\\\u00e9"}"#,
            r#"{"key":"AbC/dEf+Gh= \"q\\\u00E9"}"#,
        ];
        for echo in echoes {
            let scrubbed = scrub(echo, std::slice::from_ref(&key));
            assert!(scrubbed.contains("***") && !scrubbed.contains("AbC"), "{echo} -> {scrubbed}");
        }
        // A second review: '~' kept, lower-case hex, Go's \u0026-style escapes, '\/', and
        // URL-safe base64 without its padding.
        let key = "ab~c/d+e&f<g>h".to_string();
        let echoes = [
            "bad key Xab~c%2Fd%2Be%26f%3Cg%3EhX",
            "bad key Xab~c%2fd%2be%26f%3cg%3ehX",
            r"bad key Xab~c/d+e\u0026f\u003cg\u003ehX",
            r"bad key Xab~c\/d+e&f<g>hX",
        ];
        for echo in echoes {
            let scrubbed = scrub(echo, std::slice::from_ref(&key));
            assert_eq!(scrubbed, "bad key X***X", "{echo}");
        }
        let basic = "YWJ+Yy9k+ZQ==".to_string();
        assert_eq!(scrub("token YWJ-Yy9k-ZQ!", std::slice::from_ref(&basic)), "token ***!");
        assert_eq!(scrub("token YWJ-Yy9k-ZQ==", &[basic]), "token ***");
    }

    #[test]
    fn userinfo_is_hidden() {
        assert_eq!(redact_url("https://user:s3cret@example.com/a"), "https://***@example.com/a");
        assert_eq!(redact_url("https://TOKEN@example.com"), "https://***@example.com");
        assert_eq!(redact_url("postgres://u@h:p@db:5432/x"), "postgres://***@db:5432/x");
        // Unencoded `#`, `/` or `?` in a password.
        assert_eq!(redact_url("postgres://u:pw#9@127.0.0.1:1/db"), "postgres://***@127.0.0.1:1/db");
        assert_eq!(redact_url("postgres://u:pw/10@h/db?x=1"), "postgres://***@h/db?x=1");
        assert_eq!(redact_url("postgres://u:pw?11@h/db"), "postgres://***@h/db");
        assert_eq!(redact_url("https://h/p?mail=a@b&token=t"), "https://h/p?mail=a@b&token=***");
        // An `@` after the authority neither hides the host nor saves a user-name token.
        assert_eq!(redact_url("http://TOKEN123@h/a?email=ops@x.com"), "http://***@h/a?email=ops@x.com");
        assert_eq!(redact_url("http://TOKEN123@h/a@b"), "http://***@h/a@b");
        assert_eq!(
            redact_url("http://w.internal:8080/b.csv?owner=ops@x.com"),
            "http://w.internal:8080/b.csv?owner=ops@x.com"
        );
        assert_eq!(redact_url("https://example.com/a@b"), "https://example.com/a@b");
    }

    #[test]
    fn secret_parameters_are_hidden_and_others_kept() {
        let url = "https://h/p?token=t1&page=2&X-Amz-Signature=s&API_KEY=k&client%5Fsecret=c&sslpassword=p";
        let want = "https://h/p?token=***&page=2&X-Amz-Signature=***&API_KEY=***&client%5Fsecret=***&sslpassword=***";
        assert_eq!(redact_url(url), want);
        assert_eq!(redact_url("sqlite:///tmp/w.db?mode=ro&password=x"), "sqlite:///tmp/w.db?mode=ro&password=***");
        assert_eq!(redact_url("sqlite:w.db?pwd=x"), "sqlite:w.db?pwd=***");
        for name in ["pass", "passwd", "access_token", "apikey", "sig", "auth", "credential", "Secret"] {
            assert_eq!(redact_url(&format!("http://h/?{name}=v")), format!("http://h/?{name}=***"), "{name}");
        }
    }

    #[test]
    fn both_at_once_and_fragments() {
        assert_eq!(redact_url("http://a:b@h:1/x?token=t&x=1"), "http://***@h:1/x?token=***&x=1");
        assert_eq!(redact_url("https://h/cb#access_token=t&state=s"), "https://h/cb#access_token=***&state=s");
        assert_eq!(redact_url("https://h/p?flag&token"), "https://h/p?flag&token");
    }

    #[test]
    fn connection_strings_and_plain_text() {
        assert_eq!(redact_url("host=db user=me password=pw dbname=x"), "host=db user=me password=*** dbname=x");
        assert_eq!(redact_url("snapshots/a.csv"), "snapshots/a.csv");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn a_urls_secrets_are_its_password_its_basic_form_and_its_secret_parameters() {
        let url = url::Url::parse("https://me:p%40ss@h/x?token=t0k%2Fn&page=2").unwrap();
        let secrets = url_secrets(&url);
        for want in ["p%40ss", "p@ss", "bWU6cEBzcw==", "t0k%2Fn", "t0k/n"] {
            assert!(secrets.contains(&want.to_string()), "{want} in {secrets:?}");
        }
        assert!(!secrets.contains(&"2".to_string()), "{secrets:?}");
        // A token given as the user name, alone.
        let secrets = url_secrets(&url::Url::parse("http://TOKEN123@h/p").unwrap());
        for want in ["TOKEN123", "VE9LRU4xMjM6"] {
            assert!(secrets.contains(&want.to_string()), "{want} in {secrets:?}");
        }
    }

    #[test]
    fn an_authorization_values_secrets_include_its_credentials_and_their_decoded_form() {
        assert_eq!(header_secrets("Bearer abc123"), ["Bearer abc123", "abc123"]);
        let secrets = header_secrets("Basic bWU6cEBzcw==");
        assert!(secrets.contains(&"p@ss".to_string()) && secrets.contains(&"me:p@ss".to_string()), "{secrets:?}");
    }

    #[test]
    fn every_secret_is_replaced_and_short_ones_are_left() {
        let secrets = vec!["wk_123".to_string(), "d2tfMTIzOg==".to_string(), "ab".to_string()];
        let echoed = "you sent wk_123 as Basic d2tfMTIzOg== (ab)";
        assert_eq!(scrub(echoed, &secrets), "you sent *** as Basic *** (ab)");
    }
}
