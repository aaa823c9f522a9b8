mod support;
use support::{Postern, upstream::Upstream};

#[tokio::test]
async fn forwards_to_an_upstream() {
    let up = Upstream::start("a").await;
    let p = Postern::start(&format!(
        "routes:\n  - from: https://app.example.com\n    to: {}\n    allow_public_unauthenticated_access: true\n",
        up.url()
    ));
    let resp = p.client().get(p.url("app.example.com", "/hello?x=1")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().target, "/hello?x=1");
}
