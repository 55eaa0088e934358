//! `--cluster-streams N`: sessions spread over N update streams by a hash of their token.
//! Each session keeps one order across nodes and resumes on a node that never served it
//! (its history replayed from its own stream); a node spreading sessions another way
//! would order them apart from the others, so it stops with a one-line error.

use async_nats::jetstream;
use sova_relay_protocol::{Message, ResumeRequest};

use crate::harness::{join, node_args, resume, run_to_exit, Cluster, WAIT};
use crate::relaying::{payload, read_broadcasts};

const STREAMS: usize = 4;
/// Sessions in the spread test: their tokens' hashes put at least one in every stream.
const SESSIONS: usize = 12;
/// Updates `b` sends in each session, `a` resumes from the middle of them.
const B_UPDATES: u64 = 20;
const A_UPDATES: u64 = 5;

/// Messages each update stream of the cluster holds, by stream name (sorted).
async fn update_streams(cluster: &Cluster) -> Vec<(String, u64)> {
    let read = async {
        let client = async_nats::connect(cluster.nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let mut names = Vec::new();
        let mut listing = js.stream_names();
        while let Some(name) = futures_util::TryStreamExt::try_next(&mut listing)
            .await
            .unwrap()
        {
            if name.starts_with("SOVA_UPDATES") {
                names.push(name);
            }
        }
        names.sort();
        let mut counts = Vec::new();
        for name in names {
            let mut stream = js.get_stream(&name).await.unwrap();
            let messages = stream.info().await.unwrap().state.messages;
            counts.push((name, messages));
        }
        counts
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("NATS did not answer")
}

/// One session: `a` (resume) on node-0 and `b` on node-1 exchange updates; then `a`
/// resumes on node-2 from the middle of `b`'s updates.
async fn play_and_resume(cluster: &Cluster, token: &str) {
    let (mut a, response) = join(cluster, 0, "a", token, &["resume"]).await;
    let Message::RegistrationResponse {
        epoch: Some(epoch),
        resume_secret: Some(secret),
        ..
    } = response
    else {
        panic!("{token}: a got no resume fields: {response:?}");
    };
    let (mut b, _) = join(cluster, 1, "b", token, &[]).await;
    for n in 0..B_UPDATES {
        b.update(n, &payload("b", n)).await;
    }
    let heard = read_broadcasts(&mut a, B_UPDATES as usize).await;
    let mut previous = 0;
    for (n, broadcast) in heard.iter().enumerate() {
        assert_eq!(
            (broadcast.from.as_str(), broadcast.timestamp),
            ("b", n as u64),
            "{token}: a"
        );
        let seq = broadcast
            .seq
            .expect("a asked for resume: every broadcast has seq");
        assert!(seq > previous, "{token}: seq {seq} after {previous}");
        previous = seq;
    }
    for n in 0..A_UPDATES {
        a.update(n, &payload("a", n)).await;
    }
    let own = read_broadcasts(&mut b, A_UPDATES as usize).await;
    let timestamps: Vec<u64> = own.iter().map(|x| x.timestamp).collect();
    assert_eq!(timestamps, (0..A_UPDATES).collect::<Vec<_>>(), "{token}: b");
    assert!(own.iter().all(|x| x.from == "a"), "{token}: b got {own:?}");

    // Node-2 never served the session: the replay comes from the session's own stream.
    let half = B_UPDATES as usize / 2;
    let from = ResumeRequest {
        epoch,
        seq: heard[half - 1].seq.unwrap(),
        secret,
    };
    drop(a);
    let (mut resumed, response) = resume(cluster, 2, "a", token, from).await;
    assert!(
        matches!(
            &response,
            Message::RegistrationResponse { success: true, resumed: Some(outcome), .. }
                if outcome == "ok"
        ),
        "{token}: a on node-2: {response:?}"
    );
    let replayed: Vec<u64> = read_broadcasts(&mut resumed, B_UPDATES as usize - half)
        .await
        .iter()
        .map(|x| {
            assert_eq!(x.from, "b", "{token}: a's own updates are never replayed");
            x.timestamp
        })
        .collect();
    assert_eq!(
        replayed,
        (half as u64..B_UPDATES).collect::<Vec<_>>(),
        "{token}"
    );
    assert!(resumed.sync().await.is_empty(), "{token}: nothing else");
}

#[tokio::test]
async fn sessions_spread_over_several_streams_keep_their_order_and_resume_anywhere() {
    let streams = STREAMS.to_string();
    let Some(cluster) = Cluster::start("streams", 3, &["--cluster-streams", &streams]).await else {
        return;
    };
    let status = cluster.nodes[0].status().await;
    assert_eq!(status["cluster"]["update_streams"], STREAMS, "{status}");
    for session in 0..SESSIONS {
        play_and_resume(&cluster, &format!("spread-{session}")).await;
    }

    let counts = update_streams(&cluster).await;
    let names: Vec<&str> = counts.iter().map(|(name, _)| name.as_str()).collect();
    let expected: Vec<String> = (0..STREAMS)
        .map(|i| format!("SOVA_UPDATES_{i}_OF_{STREAMS}"))
        .collect();
    assert_eq!(names, expected, "the update streams in NATS");
    assert!(
        counts.iter().all(|(_, messages)| *messages > 0),
        "every stream orders some of the {SESSIONS} sessions: {counts:?}"
    );
    let total: u64 = counts.iter().map(|(_, messages)| messages).sum();
    assert_eq!(
        total,
        SESSIONS as u64 * (B_UPDATES + A_UPDATES),
        "each update stored once: {counts:?}"
    );

    // A node with the default single stream would order these sessions apart.
    let (status, stderr) = run_to_exit(&node_args(&cluster.nats.url(), "node-single"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sova-relay: ") && last.contains("--cluster-streams"),
        "{stderr}"
    );
    assert!(last.contains("SOVA_UPDATES_0_OF_4"), "{stderr}");
    assert_eq!(update_streams(&cluster).await.len(), STREAMS);
}

#[tokio::test]
async fn a_node_with_another_stream_count_stops_with_a_one_line_error() {
    let Some(cluster) = Cluster::start("streams-mismatch", 1, &[]).await else {
        return;
    };
    let mut args = node_args(&cluster.nats.url(), "node-spread");
    args.extend(["--cluster-streams".to_owned(), "3".to_owned()]);
    let (status, stderr) = run_to_exit(&args);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("sova-relay: "), "{stderr}");
    assert!(
        last.contains("SOVA_UPDATES") && last.contains("--cluster-streams"),
        "{stderr}"
    );
    // Nothing was created beside the cluster's stream, and node-0 is unaffected.
    let names: Vec<String> = update_streams(&cluster)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["SOVA_UPDATES"]);
    cluster.nodes[0].wait_ready(200, WAIT).await;
}
