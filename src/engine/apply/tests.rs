use super::*;
use crate::cluster::Sequencer;
use crate::engine::{EngineConfig, Polled};
use crate::metrics::Metrics;
use crate::store::memory::MemoryStore;
use crate::writer::{Writer, WriterConfig};
use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;

/// A node: an engine with small caps (so the random log hits every refusal) and its sequencer.
struct Node {
    _writer: Writer,
    engine: Engine,
    sequencer: Sequencer,
}

impl Node {
    fn new() -> Self {
        let metrics = Arc::new(Metrics::new(&["x"]));
        let writer = Writer::start(Box::new(MemoryStore), WriterConfig::new(1_000_000), metrics.clone()).unwrap();
        let config = EngineConfig {
            max_users: 12,
            max_sessions_per_user: 2,
            max_contacts_per_user: 3,
            // Log time advances ~1 ms an entry: sessions idle for 150 entries go, messages
            // older than 400 leave, and mailboxes of 16 overflow.
            session_ttl: Duration::from_millis(150),
            message_ttl: Duration::from_millis(400),
            ..EngineConfig::new(3, 16)
        };
        let engine = Engine::new(config, writer.handle(), metrics);
        Self { _writer: writer, engine, sequencer: Sequencer::new() }
    }

    fn apply(&mut self, seq: u64, ts: i64, command: &Command) -> Result<Effect, EngineError> {
        let applied = self.sequencer.apply(seq, ts, command).unwrap();
        self.engine.apply(&applied, command)
    }
}

fn hex(n: u128) -> String {
    format!("{n:032x}")
}

/// One random command over the users and sessions the log has named so far (some of them gone,
/// some never there, some malformed).
fn command(rng: &mut StdRng, users: i64, sessions: &[String]) -> Command {
    let user = |rng: &mut StdRng| rng.gen_range(1..=users + 2);
    let session = |rng: &mut StdRng| {
        if sessions.is_empty() || rng.gen_bool(0.05) {
            if rng.gen_bool(0.5) {
                "not a session".to_owned()
            } else {
                hex(rng.gen())
            }
        } else {
            sessions[rng.gen_range(0..sessions.len())].clone()
        }
    };
    match rng.gen_range(0..100) {
        0..=7 => Command::CreateUser {
            // A few uuids repeat: create is then the existing user.
            uuid: format!("user-{}", rng.gen_range(0..20)),
            display_name: format!("name {}", rng.gen::<u16>()),
        },
        8..=9 => Command::UpdateUser { user_id: user(rng), display_name: format!("renamed {}", rng.gen::<u16>()) },
        10 => Command::DeleteUser { user_id: user(rng) },
        11..=18 => Command::OpenSession { user_id: user(rng), session: hex(rng.gen()) },
        19..=20 => Command::CloseSession { session: session(rng) },
        21..=26 => Command::AddContact { user_id: user(rng), contact_id: user(rng) },
        27..=28 => Command::RemoveContact { user_id: user(rng), contact_id: user(rng) },
        29..=33 => Command::Touch { sessions: (0..rng.gen_range(0..4)).map(|_| session(rng)).collect() },
        34..=36 => Command::Tick,
        _ => Command::Send {
            session: session(rng),
            receiver_id: user(rng),
            body: format!("body {}", rng.gen::<u32>()),
            attachments: if rng.gen_bool(0.3) { r#"{"k":[1,2]}"#.to_owned() } else { "null".to_owned() },
            message: if rng.gen_bool(0.01) { "bad".to_owned() } else { hex(rng.gen()) },
        },
    }
}

/// Everything a node shows, in a comparable form: users, sessions (with times), each user's
/// contacts, and each session's whole poll answer, byte for byte.
#[derive(Debug, PartialEq)]
struct State {
    users: Vec<UserView>,
    sessions: Vec<SessionView>,
    contacts: Vec<(i64, Vec<i64>)>,
    polls: Vec<(String, Vec<u8>, Polled)>,
}

fn state(e: &Engine) -> State {
    let users = e.users();
    let sessions = e.sessions();
    let contacts = users.iter().map(|u| (u.id, e.user_arc(u.id).unwrap().contact_ids())).collect();
    let polls = sessions
        .iter()
        .map(|s| {
            let session = e.session(s.uuid.parse().unwrap()).unwrap();
            let mut out = BytesMut::new();
            let polled = e.poll(&session, None, &mut out);
            (s.uuid.clone(), out.to_vec(), polled)
        })
        .collect();
    State { users, sessions, contacts, polls }
}

/// The created_utc of every message in a poll answer, in ns, in order.
fn created_of(answer: &[u8]) -> Vec<i64> {
    let mut array = b"[".to_vec();
    array.extend_from_slice(answer);
    array.push(b']');
    let messages: Vec<serde_json::Value> = serde_json::from_slice(&array).unwrap();
    messages
        .iter()
        .map(|m| {
            let t = time::OffsetDateTime::parse(
                m["created_utc"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            t.unix_timestamp_nanos() as i64
        })
        .collect()
}

/// Property (seeded, 40 random logs of 1,500 entries, the stream's clock going forwards, still
/// and backwards): two nodes applying the same log agree on every outcome and end with the same
/// users, sessions, contacts and byte-identical poll answers, every mailbox strictly increasing.
/// The log must also have exercised every kind of outcome, or the agreement proves little.
#[test]
fn two_nodes_applying_one_log_reach_the_same_state() {
    let mut rng = StdRng::seed_from_u64(0xC1);
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut culled = 0;
    for _ in 0..40 {
        let (mut a, mut b) = (Node::new(), Node::new());
        let mut ts: i64 = 1_700_000_000_000_000_000;
        let mut sessions: Vec<String> = Vec::new();
        let mut users = 0;
        for seq in 1..=1_500u64 {
            let command = command(&mut rng, users, &sessions);
            if let Command::OpenSession { session, .. } = &command {
                sessions.push(session.clone());
            }
            if let Command::CreateUser { .. } = command {
                users += 1;
            }
            ts += rng.gen_range(-200_000..2_000_000);
            let x = a.apply(seq, ts, &command);
            let y = b.apply(seq, ts, &command);
            assert_eq!(x, y, "entry {seq}: {command:?}");
            let kind = match &x {
                Ok(Effect::User(_)) => "user".to_owned(),
                Ok(Effect::Session(_)) => "session".to_owned(),
                Ok(Effect::Message(_)) => "message".to_owned(),
                Ok(Effect::Done) => "done".to_owned(),
                Err(e) => format!("{e:?}"),
            };
            *outcomes.entry(kind).or_default() += 1;
        }
        culled += a.engine.metrics.sessions_culled.get();
        let (sa, sb) = (state(&a.engine), state(&b.engine));
        assert_eq!(sa, sb);
        for (_, answer, _) in &sa.polls {
            let created = created_of(answer);
            assert!(created.windows(2).all(|w| w[0] < w[1]), "out of order: {created:?}");
        }
        // Nothing local is stamped at or before the log's last timestamp.
        assert!(a.engine.clock.next() > a.sequencer.position().created_ns);
    }
    assert!(culled > 0, "no Tick culled a session");
    for kind in [
        "user",
        "session",
        "message",
        "done",
        "NoSuchSession",
        "NoSuchUser(\"user_id\")",
        "NoSuchReceiver",
        "SelfContact",
        "TooManyUsers",
        "TooManySessions",
        "TooManyContacts",
        "MalformedCommand(\"message\")",
    ] {
        assert!(outcomes.get(kind).is_some_and(|n| *n > 0), "no {kind} outcome in {outcomes:?}");
    }
}

/// A send applied from the log carries the log's timestamp, wakes nothing early, lands in both
/// mailboxes, and makes its session active as of then; Touch and Tick follow the log's time.
#[test]
fn times_come_from_the_log() {
    let mut n = Node::new();
    let t0 = 1_700_000_000_000_000_000;
    let create = |uuid: &str| Command::CreateUser { uuid: uuid.into(), display_name: String::new() };
    assert!(matches!(n.apply(1, t0, &create("a")), Ok(Effect::User(UserView { id: 1, .. }))));
    assert!(matches!(n.apply(2, t0, &create("b")), Ok(Effect::User(UserView { id: 2, .. }))));
    let s = hex(7);
    let Ok(Effect::Session(view)) = n.apply(3, t0, &Command::OpenSession { user_id: 1, session: s.clone() }) else {
        panic!("no session")
    };
    // The stream's clock stood still: the sequencer made it strictly later.
    assert_eq!(view.created_utc, crate::render::timestamp(t0 + 2));
    let send = Command::Send {
        session: s.clone(),
        receiver_id: 2,
        body: "hi".into(),
        attachments: "null".into(),
        message: hex(9),
    };
    let Ok(Effect::Message(json)) = n.apply(4, t0 + 50, &send) else { panic!("not sent") };
    assert_eq!(created_of(json.json()), vec![t0 + 50]);
    let session = n.engine.session(s.parse().unwrap()).unwrap();
    assert_eq!(session.last_active(), t0 + 50);
    for id in [1, 2] {
        assert_eq!(n.engine.user_arc(id).unwrap().mailbox.newest(), Some(t0 + 50));
    }
    n.apply(5, t0 + 60, &Command::Touch { sessions: vec![s.clone()] }).unwrap();
    assert_eq!(session.last_active(), t0 + 60);
    // A tick within the session TTL keeps it; one past it closes it, held or not.
    let _hold = crate::engine::Hold::new(session.clone());
    n.apply(6, t0 + 60 + 100_000_000, &Command::Tick).unwrap();
    assert!(n.engine.session(session.uuid).is_ok());
    n.apply(7, t0 + 60 + 151_000_000, &Command::Tick).unwrap();
    assert_eq!(n.engine.session(session.uuid).err(), Some(EngineError::NoSuchSession));
    assert!(session.is_closed());
    // A send from the closed session is refused on every node alike.
    let Command::Send { session, receiver_id, body, attachments, .. } = send else { unreachable!() };
    let send = Command::Send { session, receiver_id, body, attachments, message: hex(10) };
    assert_eq!(n.apply(8, t0, &send), Err(EngineError::NoSuchSession));
}
