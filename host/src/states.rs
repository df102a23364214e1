//! The states a request, a ticket and an asynchronous job can be in, as
//! types: stored as their names (the store's `ToValue`/`FromValue`), shown as their
//! names (serde), and an unknown name read back is an error, never a silent
//! default.

/// An enum whose variants are stored and shown by name.
macro_rules! named_states {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant,)+];

            /// The name stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "\"{other}\" is not one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl $crate::store::sql::ToValue for $name {
            fn to_value(&self) -> Result<$crate::store::sql::Value<'_>, $crate::store::StoreError> {
                Ok($crate::store::sql::Value::Text(std::borrow::Cow::Borrowed(self.as_str())))
            }
        }

        impl $crate::store::sql::FromValue for $name {
            fn from_value(value: $crate::store::sql::Value<'_>) -> Result<Self, String> {
                String::from_value(value)?.parse()
            }
        }
    };
}

named_states! {
    /// How a request's run ended.
    RequestStatus {
        /// A stage answered.
        Answered => "answered",
        /// A person must answer; a ticket is open.
        Escalated => "escalated",
        /// The input was refused.
        Rejected => "rejected",
        /// A stage failed, or the request could not run.
        Failed => "failed",
    }
}

named_states! {
    /// Where a review ticket stands.
    TicketState {
        /// Waiting for a reviewer.
        Open => "open",
        /// A reviewer took it.
        Claimed => "claimed",
        /// Answered (an escalation) or accepted (a correction).
        Resolved => "resolved",
        /// A proposed correction turned down.
        Rejected => "rejected",
    }
}

named_states! {
    /// Where an asynchronous request's job stands.
    JobStatus {
        /// Accepted, waiting for a worker.
        Queued => "queued",
        /// A worker is running it.
        Running => "running",
        /// Completed: its record is kept.
        Done => "done",
        /// Started too many times without completing.
        Dead => "dead",
    }
}

impl JobStatus {
    /// Whether the job will not run again.
    pub fn finished(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for state in TicketState::ALL {
            assert_eq!(state.as_str().parse::<TicketState>(), Ok(*state));
        }
        for status in RequestStatus::ALL {
            assert_eq!(status.as_str().parse::<RequestStatus>(), Ok(*status));
        }
        let error = "lost".parse::<JobStatus>().unwrap_err();
        assert_eq!(error, "\"lost\" is not one of queued, running, done, dead");
    }

    #[test]
    fn an_unknown_stored_name_fails_the_read() {
        use crate::store::sql::{Conn, params};
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut conn = Conn::Sqlite(&conn);
        let read = conn.query_row("SELECT 'lost'", params![], |row| row.get::<TicketState>(0));
        assert!(
            read.unwrap_err()
                .to_string()
                .contains("\"lost\" is not one of")
        );
        let read: TicketState = conn
            .query_row("SELECT ?1", params![TicketState::Claimed], |row| row.get(0))
            .unwrap();
        assert_eq!(read, TicketState::Claimed);
    }
}
