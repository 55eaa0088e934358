use super::*;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn reg(me: u128, seq: u64, members: &[u128]) -> Registered {
    Registered {
        id: id(me),
        epoch: 1,
        seq,
        secret: None,
        resumed: None,
        members: members.iter().map(|&m| id(m)).collect(),
    }
}

fn broadcast(name: &str, source: u128, counter: u64, seq: u64) -> Message {
    Message::StateBroadcast {
        source_instance_name: name.to_owned(),
        timestamp: 0,
        update_data: UpdateData::from_bin(&update::encode(id(source), counter, 3)),
        seq: Some(seq),
    }
}

fn failures(books: &Books, inv: Inv) -> u64 {
    books.verdicts.counts(inv).1
}

fn setup() -> (Books, Receiver) {
    let books = Books::default();
    books.ledger.registered(id(2), "alice", SourceKind::Sender);
    books.ledger.registered(id(3), "bob", SourceKind::Sender);
    let mut rx = Receiver::new("me", true);
    rx.fresh(&reg(1, 10, &[2]));
    (books, rx)
}

#[test]
fn a_clean_stream_passes() {
    let (books, mut rx) = setup();
    rx.on_message(broadcast("alice", 2, 7, 11), &books);
    rx.on_message(broadcast("alice", 2, 8, 12), &books);
    let joined = Message::InstanceConnected {
        instance_id: id(3),
        instance_name: "bob".into(),
    };
    rx.on_message(joined, &books);
    rx.on_message(broadcast("bob", 3, 1, 13), &books);
    books.ledger.finished(id(3), 1);
    let left = Message::InstanceDisconnected {
        instance_id: id(3),
        instance_name: "bob".into(),
    };
    rx.on_message(left, &books);
    assert_eq!(books.verdicts.total_failed(), 0);
    assert!(books.verdicts.counts(Inv::RunTail).0 == 1);
}

#[test]
fn gaps_duplicates_and_late_starts_are_caught() {
    let (books, mut rx) = setup();
    rx.on_message(broadcast("alice", 2, 7, 11), &books);
    rx.on_message(broadcast("alice", 2, 9, 13), &books);
    assert_eq!(failures(&books, Inv::SourceOrder), 1);
    assert_eq!(failures(&books, Inv::SeqContiguous), 1);
    rx.on_message(broadcast("alice", 2, 9, 13), &books);
    assert_eq!(failures(&books, Inv::SourceOrder), 2);
    assert_eq!(failures(&books, Inv::SeqOrder), 1);
    let joined = Message::InstanceConnected {
        instance_id: id(3),
        instance_name: "bob".into(),
    };
    rx.on_message(joined, &books);
    rx.on_message(broadcast("bob", 3, 2, 14), &books);
    assert_eq!(failures(&books, Inv::SourceOrder), 3, "bob joined later");
}

#[test]
fn echoes_misattribution_and_strangers_are_caught() {
    let (books, mut rx) = setup();
    books.ledger.registered(id(1), "me", SourceKind::Sender);
    rx.on_message(broadcast("me", 1, 1, 11), &books);
    assert_eq!(failures(&books, Inv::NoEcho), 1);
    rx.on_message(broadcast("bob", 2, 1, 12), &books);
    assert_eq!(failures(&books, Inv::Intact), 1);
    rx.on_message(broadcast("bob", 3, 1, 13), &books);
    assert_eq!(failures(&books, Inv::Membership), 1, "bob never joined");
}

#[test]
fn a_missed_tail_and_repeated_notices_are_caught() {
    let (books, mut rx) = setup();
    rx.on_message(broadcast("alice", 2, 4, 11), &books);
    books.ledger.finished(id(2), 5);
    let left = Message::InstanceDisconnected {
        instance_id: id(2),
        instance_name: "alice".into(),
    };
    rx.on_message(left.clone(), &books);
    assert_eq!(failures(&books, Inv::RunTail), 1);
    rx.on_message(left, &books);
    assert_eq!(failures(&books, Inv::Membership), 1);
}

#[test]
fn a_resume_continues_the_life_and_its_replay_may_name_departed_members() {
    let (books, mut rx) = setup();
    rx.on_message(broadcast("alice", 2, 1, 11), &books);
    let mut again = reg(4, 13, &[]);
    again.resumed = Some(RESUMED_OK.to_owned());
    assert!(rx.resumed(&again, &books));
    rx.on_message(broadcast("alice", 2, 2, 12), &books);
    rx.on_message(broadcast("alice", 2, 3, 13), &books);
    assert_eq!(books.verdicts.total_failed(), 0);
    rx.on_message(broadcast("alice", 2, 4, 14), &books);
    assert_eq!(failures(&books, Inv::Membership), 1, "live, and alice left");
}
