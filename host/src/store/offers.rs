//! Offers of jobs between hosts sharing a PostgreSQL server: a host that
//! accepts an asynchronous request it cannot start at once says so
//! (`NOTIFY`), and every host listening (`LISTEN`) looks for work at once
//! instead of at its next look. An offer is only a wake-up: the job is
//! taken, by one host, through its lease as always, and a lost offer costs
//! only the wait until the next look. On SQLite there is no other host and
//! nothing is sent.

use std::time::Duration;

use postgres::NoTls;
use postgres::fallible_iterator::FallibleIterator as _;
use tokio::sync::mpsc;

use super::sql::params;
use super::{Store, StoreError};

/// The channel offers go out on.
const CHANNEL: &str = "strata_jobs";

/// How long the listener waits between checks that its store is still in
/// use, and before connecting again after it lost its connection.
const LISTEN_TICK: Duration = Duration::from_secs(1);

impl Store {
    /// Tell the other hosts that job `id` is waiting for a worker.
    pub async fn offer_job(&self, id: String) -> Result<(), StoreError> {
        if self.postgres.is_none() {
            return Ok(());
        }
        self.write_with(false, move |conn| {
            // Sent when the batch commits, with the job already durable.
            conn.execute(&format!("SELECT pg_notify('{CHANNEL}', ?1)"), params![id])?;
            Ok(())
        })
        .await
    }

    /// Offers made by any host (this one's too), as job ids, from a
    /// connection of their own on a thread of its own; `None` on SQLite.
    /// The thread ends once the receiver is dropped.
    pub fn listen_for_offers(&self) -> Option<mpsc::Receiver<String>> {
        let config = self.postgres.clone()?;
        let (offers, receiver) = mpsc::channel(64);
        let spawned = std::thread::Builder::new()
            .name("strata-offers".to_owned())
            .spawn(move || {
                while !offers.is_closed() {
                    if let Err(error) = listen(&config, &offers) {
                        tracing::warn!(%error, "lost the connection listening for offered jobs");
                        std::thread::sleep(LISTEN_TICK);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start listening for offered jobs; looking once a second");
            return None;
        }
        Some(receiver)
    }
}

/// Listen on one connection until it fails or nobody wants the offers.
fn listen(config: &postgres::Config, offers: &mpsc::Sender<String>) -> Result<(), StoreError> {
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    while !offers.is_closed() {
        let offer = client.notifications().timeout_iter(LISTEN_TICK).next()?;
        if let Some(offer) = offer {
            // A full channel means a wake-up is pending already.
            let _ = offers.try_send(offer.payload().to_owned());
        }
    }
    Ok(())
}
