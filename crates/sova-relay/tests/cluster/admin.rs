//! The admin API across nodes: a kick sent to any node closes the instance on its own node;
//! a node that does not answer is reported, not taken for done.

use sova_relay_protocol::Message;

use crate::harness::{http_request, join, next_is_connected, Cluster};

const ADMIN_TOKEN: &str = "cluster-admin-secret";

fn kick_headers() -> String {
    format!("Authorization: Bearer {ADMIN_TOKEN}\r\n")
}

#[tokio::test]
async fn an_instance_is_kicked_through_another_node() {
    let Some(cluster) = Cluster::start("remote-kick", 2, &["--admin-token", ADMIN_TOKEN]).await
    else {
        return;
    };
    let token = "kick-jam";
    let (mut watcher, _) = join(&cluster, 0, "watcher", token, &["presence"]).await;
    let (mut target, _) = join(&cluster, 1, "target", token, &[]).await;
    next_is_connected(&mut watcher, "target").await;

    // Sent to node-0, which does not hold the instance.
    let path = format!("/api/instances/{}", target.id);
    let (code, body) = http_request(cluster.addr(0), "DELETE", &path, &kick_headers())
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["kicked"]["name"], "target", "{body}");
    assert_eq!(answer["kicked"]["node"], "node-1", "{body}");

    let last = target.expect_closed().await;
    assert!(
        last.iter().any(|m| matches!(
            m,
            Message::Error { message } if message == "Kicked by operator"
        )),
        "target: {last:?}"
    );
    match watcher.recv().await {
        Message::InstanceDisconnected { instance_name, .. } => {
            assert_eq!(instance_name, "target");
        }
        other => panic!("watcher: expected target's departure, got {other:?}"),
    }

    // Gone everywhere now; a wrong token is refused before anything is looked up.
    for node in 0..2 {
        let (code, body) = http_request(cluster.addr(node), "DELETE", &path, &kick_headers())
            .await
            .unwrap();
        assert_eq!(code, 404, "node-{node}: {body}");
    }
    let (code, _) = http_request(
        cluster.addr(0),
        "DELETE",
        &path,
        "Authorization: Bearer wrong\r\n",
    )
    .await
    .unwrap();
    assert_eq!(code, 401);

    // A node that does not answer: the operator is told which, the kick is not claimed.
    let (_frozen, _) = join(&cluster, 1, "frozen", token, &[]).await;
    let frozen_id = next_is_connected(&mut watcher, "frozen").await;
    cluster.nodes[1].freeze(true);
    let path = format!("/api/instances/{frozen_id}");
    let answer = http_request(cluster.addr(0), "DELETE", &path, &kick_headers()).await;
    cluster.nodes[1].freeze(false);
    let (code, body) = answer.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("node node-1 did not answer"), "{body}");
}
