//! Contentstack attribute creation: missing keys are created through the management API
//! before anything is sent for their computation.

use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

/// An edge stand-in that acknowledges everything, and a management stand-in that lists
/// `existing` and answers POSTs with `create_status`.
async fn servers(existing: &[&str], create_status: u16) -> (MockServer, MockServer) {
    let edge = contentstack_server().await;
    let management = MockServer::start().await;
    let list: Vec<_> = existing.iter().map(|k| json!({"_id": "x", "key": k, "name": k, "description": ""})).collect();
    Mock::given(method("GET"))
        .and(path("/attributes"))
        .and(header("authorization", format!("Bearer {MANAGEMENT_TOKEN}").as_str()))
        .and(header("x-project-uid", PROJECT_UID))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(list)))
        .mount(&management)
        .await;
    Mock::given(method("POST"))
        .and(path("/attributes"))
        .respond_with(ResponseTemplate::new(create_status).set_body_string("{\"message\":\"no permission\"}"))
        .mount(&management)
        .await;
    (edge, management)
}

fn app(edge: &MockServer, management: &MockServer) -> TestApp {
    let extra = format!(
        "create_attributes = true\nmanagement_api_base_url = \"{}\"\nmanagement_token_env = \"{MANAGEMENT_TOKEN_ENV}\"\n",
        management.uri()
    );
    let app = TestApp::contentstack_at(
        &edge.uri(),
        2,
        &extra,
        &format!("{}{}", audience("Known", "k.csv"), audience("Brand New", "n.csv")),
    );
    app.write("k.csv", &csv_users(&["u1"]));
    app.write("n.csv", &csv_users(&["u2"]));
    app
}

#[tokio::test]
async fn missing_attributes_are_created_once_before_delivery() {
    let (edge, management) = servers(&["known"], 201).await;
    let app = app(&edge, &management);
    assert_success(&app.sync(&[]).await);

    let calls = management.received_requests().await.unwrap();
    let summary: Vec<(String, String)> =
        calls.iter().map(|r| (r.method.to_string(), r.url.path().to_string())).collect();
    assert_eq!(summary, vec![("GET".into(), "/attributes".into()), ("POST".into(), "/attributes".into())]);
    let created: serde_json::Value = serde_json::from_slice(&calls[1].body).unwrap();
    assert_eq!(created["key"], "brand_new");
    assert_eq!(created["name"], "Brand New");
    assert!(created["description"].as_str().unwrap().contains("Brand New"));
    assert_eq!(
        sorted(received(&edge).await),
        vec![("u1".into(), json!({"known": true})), ("u2".into(), json!({"brand_new": true}))]
    );

    // Known keys are remembered: the next pass asks nothing.
    app.write("n.csv", &csv_users(&["u2", "u3"]));
    assert_success(&app.sync(&[]).await);
    assert_eq!(management.received_requests().await.unwrap().len(), 2);
    let db = app.db().await;
    let remembered: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, created_by_us FROM destination_attributes ORDER BY key")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(remembered, vec![("brand_new".into(), 1), ("known".into(), 0)]);
}

#[tokio::test]
async fn an_attribute_that_cannot_be_created_blocks_its_computation_only() {
    let (edge, management) = servers(&["known"], 403).await;
    let app = app(&edge, &management);
    let out = app.sync(&[]).await;
    assert_failure(&out);
    assert!(
        stdout(&out).contains("nothing sent: cannot create the attribute \"brand_new\": HTTP 403"),
        "{}",
        stdout(&out)
    );
    assert_eq!(received(&edge).await, vec![("u1".into(), json!({"known": true}))]);
    let db = app.db().await;
    let pending: Vec<String> = sqlx::query_scalar("SELECT user_id FROM pending").fetch_all(&db).await.unwrap();
    assert_eq!(pending, ["u2"]);
}

/// Review finding: a resync moving the state to another project kept the attributes known to
/// exist in the old one, and neither listed nor created any in the new one.
#[tokio::test]
async fn a_state_moved_to_another_project_creates_the_attributes_missing_there() {
    let (edge, management) = servers(&["known"], 201).await;
    let app = app(&edge, &management);
    assert_success(&app.sync(&[]).await);
    let (new_edge, new_management) = servers(&[], 201).await;
    let quoted = |server: &MockServer| format!("\"{}\"", server.uri());
    let moved = app
        .replace_in_config(&quoted(&edge), &quoted(&new_edge))
        .replace_in_config(&quoted(&management), &quoted(&new_management));

    assert_success(&moved.run(&["resync"]).await);
    let mut created: Vec<String> = new_management
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["key"].as_str().unwrap().to_string())
        .collect();
    created.sort();
    assert_eq!(created, ["brand_new", "known"]);
    assert_eq!(received(&new_edge).await.len(), 2, "u1 and u2 sent to the new project");
}
