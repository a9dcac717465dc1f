//! Trait keys: the name a computation is sent under.
//!
//! Segment Engage sends an audience as `snake_case(name)` following the rules of its
//! go-snakecase package; operators who move from Engage expect the same keys, so this module
//! reproduces those rules exactly (DESIGN §3) instead of using a generic case converter.

/// Converts a computation name into its trait key.
///
/// Only ASCII letters and digits count; every other character separates words and is dropped.
/// A word is a run of capitals and digits followed by a run of lower-case letters and digits,
/// so `sampleText` is two words and `30days` one. Words are lower-cased and joined by `_`.
///
/// This is the word loop of go-snakecase. The Go package also has a fast path for input that is
/// already lower-case, which keeps a leading underscore (`_abc`) and splits a digit off before a
/// capital (`v2Audience` -> `v_2audience`); DESIGN §3 rules that no underscore leads and that a
/// word is capitals-and-digits then lower-case-and-digits, so we follow the word loop throughout
/// (`v2Audience` -> `v2_audience`).
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    // Within a word we are first in the "upper" run (capitals and digits), then in the
    // "lower" run (lower-case letters and digits). A capital after the lower run starts a new word.
    let mut in_word = false;
    let mut in_lower_run = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            in_word = false;
            continue;
        }
        let starts_word = !in_word || (c.is_ascii_uppercase() && in_lower_run);
        if starts_word {
            if !out.is_empty() {
                out.push('_');
            }
            in_word = true;
            in_lower_run = false;
        }
        if c.is_ascii_lowercase() {
            in_lower_run = true;
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn key_table_follows_go_snakecase() {
        let table = [
            // The examples of DESIGN §3.
            ("Order Completed Last 30 Days", "order_completed_last_30_days"),
            ("Order Completed Last 30days", "order_completed_last_30days"),
            ("3 Product Views in Last 60 Days", "3_product_views_in_last_60_days"),
            ("High-Value Users!", "high_value_users"),
            ("inviteYourCustomers", "invite_your_customers"),
            // camelCase and PascalCase
            ("sampleText", "sample_text"),
            ("SampleText", "sample_text"),
            ("lifetimeValue", "lifetime_value"),
            // runs of capitals stay one word with the lower-case run that follows
            ("HTTPServer", "httpserver"),
            ("ID", "id"),
            ("userID", "user_id"),
            // digits join the run they are in
            ("30days", "30days"),
            ("Last30Days", "last30_days"),
            ("v2Audience", "v2_audience"),
            // punctuation and whitespace separate, never lead or trail
            ("  --Lifetime   Value--  ", "lifetime_value"),
            ("a.b/c", "a_b_c"),
            ("already_snake_case", "already_snake_case"),
            ("Tab\tSeparated\nName", "tab_separated_name"),
            // non-ASCII separates and is dropped
            ("Café Lovers", "caf_lovers"),
            ("Über Fans", "ber_fans"),
            ("日本 Users", "users"),
            // the samples of go-snakecase's own test suite
            ("sample___text", "sample_text"),
            ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
            ("   $#$sample   2    Text   ", "sample_2_text"),
            ("SAMPLE 2 TEXT", "sample_2_text"),
            ("___$$Base64Encode", "base64_encode"),
            ("FOO:BAR$BAZ", "foo_bar_baz"),
            ("something.com", "something_com"),
            ("$something%", "something"),
            ("•¶§ƒ˚foo˙∆˚¬", "foo"),
            // nothing left: empty key (a configuration error upstream)
            ("!!!", ""),
            ("", ""),
        ];
        for (name, want) in table {
            assert_eq!(snake_case(name), want, "snake_case({name:?})");
        }
    }
}
