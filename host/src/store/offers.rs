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
        if !self.shared() {
            return Ok(());
        }
        self.write_with(false, move |conn| {
            // Sent when the batch commits, with the job already durable.
            conn.execute(&format!("SELECT pg_notify('{CHANNEL}', ?1)"), params![id])?;
            Ok(())
        })
        .await
    }

    /// A wake-up for every offer made by any host (this one's too), from a
    /// connection of its own on a thread of its own; `None` on SQLite.
    /// Returns once the first connection listens (or failed to), so offers
    /// made after this host says it serves reach it. The thread ends once
    /// the receiver is dropped.
    pub async fn listen_for_offers(&self) -> Option<mpsc::Receiver<()>> {
        let config = self.postgres.clone()?;
        // One pending wake-up is enough: a look takes whatever is waiting.
        let (offers, receiver) = mpsc::channel(1);
        let (listening, ready) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("strata-offers".to_owned())
            .spawn(move || {
                let mut listening = Some(listening);
                while !offers.is_closed() {
                    if let Err(error) = listen(&config, &offers, &mut listening) {
                        tracing::warn!(%error, "lost the connection listening for offered jobs");
                        std::thread::sleep(LISTEN_TICK);
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start listening for offered jobs; looking once a second");
            return None;
        }
        // Dropped unsent when the first connection failed: serve anyway.
        let _ = tokio::time::timeout(LISTEN_TICK * 5, ready).await;
        Some(receiver)
    }
}

/// Listen on one connection until it fails or nobody wants the offers.
fn listen(
    config: &postgres::Config,
    offers: &mpsc::Sender<()>,
    listening: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), StoreError> {
    let connected = config.connect(NoTls).and_then(|mut client| {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map(|()| client)
    });
    let mut client = match connected {
        Ok(client) => client,
        Err(error) => {
            // The caller stops waiting; offers come once a later try listens.
            listening.take();
            return Err(error.into());
        }
    };
    if let Some(listening) = listening.take() {
        let _ = listening.send(());
    }
    while !offers.is_closed() {
        let offer = client.notifications().timeout_iter(LISTEN_TICK).next()?;
        if offer.is_some() {
            // A full channel means a wake-up is pending already.
            let _ = offers.try_send(());
        }
    }
    Ok(())
}
