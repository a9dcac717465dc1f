//! Configuration errors as the operator sees them: one line naming file, line and field.

use crate::helpers::*;

#[tokio::test]
async fn unknown_field_names_file_line_and_field() {
    let app = TestApp::new(
        "[destination]\ntype = \"file\"\npath = \"out.ndjson\"\n",
        &audience("A", "a.csv").replace("source", "sorce"),
    );
    let out = app.sync(&[]).await;
    assert_failure(&out);
    let err = stderr(&out);
    assert!(err.contains("config.toml:10: unknown field `sorce`"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!app.state_created().await, "a config error must not create the state");
}

#[tokio::test]
async fn an_unknown_destination_type_names_file_line_and_field() {
    let app = TestApp::new("[destination]\ntype = \"webhook\"\npath = \"out.ndjson\"\n", &audience("A", "a.csv"));
    let out = app.sync(&[]).await;
    assert_failure(&out);
    let err = stderr(&out);
    assert!(
        err.contains(
            "config.toml:5: destination.type: unknown destination \"webhook\", \
             expected \"contentstack\", \"segment\" or \"file\""
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!app.state_created().await, "a config error must not create the state");
    assert!(!app.path("out.ndjson").exists(), "no destination is built from an unknown type");
}

#[tokio::test]
async fn bad_url_and_duplicate_keys_are_config_errors() {
    let app = TestApp::new(
        "[destination]\ntype = \"contentstack\"\nedge_api_base_url = \"not a url\"\nproject_uid = \"p\"\n",
        &audience("A", "a.csv"),
    );
    let err = stderr(&app.sync(&[]).await);
    assert!(err.contains("config.toml:6: destination.edge_api_base_url: \"not a url\" is not a URL"), "{err}");

    let app = TestApp::new(
        "[destination]\ntype = \"file\"\npath = \"o\"\n",
        &format!("{}{}", audience("High Value", "a.csv"), audience("high-value", "b.csv")),
    );
    let err = stderr(&app.sync(&[]).await);
    assert!(
        err.contains(
            "audience.name: \"high-value\" has key \"high_value\", which \"High Value\" (line 9) already uses"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN).current_dir(dir.path()).arg("sync").output().unwrap();
    assert_failure(&out);
    assert!(stderr(&out).contains("config.toml: cannot read configuration"), "{}", stderr(&out));
}
