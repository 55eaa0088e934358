//! The standard scenarios, by name.

use std::time::Duration;

use crate::workload::Mode;

/// A named workload shape; the target, address and duration come from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Name on the command line and in tables.
    pub name: &'static str,
    /// What it shows.
    pub about: &'static str,
    /// Client behaviour.
    pub mode: Mode,
    /// Independent groups.
    pub groups: usize,
    /// Clients per group.
    pub members: usize,
    /// Publishers per group.
    pub publishers: usize,
    /// Messages per second per publisher (0: flat out).
    pub rate: f64,
    /// Payload bytes.
    pub size: usize,
    /// Churn mode: joining and leaving clients, and how long each stays.
    pub churners: usize,
    /// Churn mode: stay of one churner.
    pub churn_stay: Duration,
    /// Fixed duration (idle needs no long run); `None`: the command line's.
    pub duration: Option<Duration>,
}

const BASE: Scenario = Scenario {
    name: "",
    about: "",
    mode: Mode::Pubsub,
    groups: 1,
    members: 20,
    publishers: 20,
    rate: 10.0,
    size: 256,
    churners: 0,
    churn_stay: Duration::from_millis(200),
    duration: None,
};

/// Every standard scenario, in suite order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "jam",
        about: "20 clients in one session, each 10 msg/s, 256 B: a busy jam",
        ..BASE
    },
    Scenario {
        name: "burst",
        about: "20 clients in one session, all publishing flat out (window 64), 256 B",
        rate: 0.0,
        ..BASE
    },
    Scenario {
        name: "fanout",
        about: "1 publisher flat out (window 64) to 100 receivers, 256 B",
        members: 101,
        publishers: 1,
        rate: 0.0,
        ..BASE
    },
    Scenario {
        name: "large",
        about: "20 clients in one session, each 2 msg/s, 64 KiB",
        rate: 2.0,
        size: 64 * 1024,
        ..BASE
    },
    Scenario {
        name: "idle",
        about: "5,000 registered silent clients (1,000 sessions of 5): memory per connection",
        mode: Mode::Idle,
        groups: 1000,
        members: 5,
        publishers: 0,
        rate: 0.0,
        duration: Some(Duration::from_secs(2)),
        ..BASE
    },
    Scenario {
        name: "many-sessions",
        about: "2,000 sessions of 5 clients (10,000 instances), each 1 msg/s, 256 B",
        groups: 2000,
        members: 5,
        publishers: 5,
        rate: 1.0,
        ..BASE
    },
    Scenario {
        name: "churn",
        about: "jam, while 20 more clients keep joining and leaving (200 ms each)",
        mode: Mode::Churn,
        churners: 20,
        ..BASE
    },
];

/// The standard scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Names of the standard scenarios, comma-separated.
pub fn names() -> String {
    SCENARIOS
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}
