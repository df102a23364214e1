//! Asynchronous requests: accepted at once, run in the background.
//!
//! A client marks a request asynchronous (`"async": true` in the body, or
//! `Prefer: respond-async`) and gets 202 with its id as soon as the request
//! is durable in the store. A fixed number of workers (`[async] workers`)
//! take accepted requests in order and run them on the serving generation,
//! with model calls allowed to join batches (see [`crate::model`]);
//! real-time requests never wait for them. When the queue holds
//! `[async] queue` requests, new ones get 429 with `Retry-After`.
//!
//! A request completes exactly once: its record (and ticket) and the end of
//! its job are committed together. After a crash, requests accepted but not
//! completed run again at start-up; one that was running when the host died
//! runs a second time (so a model may be asked twice), but completes once.
//! One that has started `[async] max_runs` times without completing (it
//! crashes the host, say) is dead: it fails with code `dead_letter`, and its
//! reason shows at `GET /v1/requests/{id}`.
//!
//! Hosts sharing a store (PostgreSQL) share the work. A host takes a job
//! with a lease (`[async] lease_ms`) that it renews while it runs the job;
//! of hosts taking one job at once, one gets it. Every second a host with
//! an idle worker looks for jobs it could take: queued for more than
//! [`QUEUED_GRACE`] on a busy host, or running on a lease that ended (a
//! host that died). A host that accepts a job none of its workers is free
//! for offers it to the others at once (PostgreSQL's `NOTIFY`), and a host
//! with an idle worker that hears the offer looks without waiting for the
//! grace. A host that starts again takes back its own jobs at once (it
//! knows them by the id in its data directory).

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::queue::SubmitError;
use crate::request::Request;
use crate::store::{Job, JobStart, StoreError};

/// Accept `job`: durable before this returns.
pub async fn submit(app: &App, job: Job) -> Result<(), SubmitError> {
    if !app.jobs.reserve() {
        return Err(SubmitError::Full);
    }
    if let Err(error) = app.store.enqueue(job.clone()).await {
        app.jobs.release();
        return Err(error.into());
    }
    let id = job.id.clone();
    // The receiver lives as long as the app; a send cannot fail before.
    let _ = app.jobs.sender.send(job);
    if app.store.shared() && app.jobs.pending() > app.jobs.workers {
        // No worker here is free for it: hosts sharing the store may be.
        let store = app.store.clone();
        app.lifecycle.clone().spawn(async move {
            if let Err(error) = store.offer_job(id).await {
                tracing::warn!(%error, "cannot offer an asynchronous request to other hosts");
            }
        });
    }
    Ok(())
}

/// How long a job may wait in its accepting host's queue before another
/// host with an idle worker takes it.
pub const QUEUED_GRACE: Duration = Duration::from_secs(2);

/// How often a host with an idle worker looks for jobs to take.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Queue the requests a previous run accepted and did not complete, and
/// start the workers, the lease renewal and the search for work other
/// hosts left.
pub async fn start(app: Arc<App>) -> Result<(), StoreError> {
    let unfinished = app
        .store
        .unfinished_jobs(app.jobs.owner.clone(), crate::store::now_millis())
        .await?;
    if !unfinished.is_empty() {
        tracing::info!(
            count = unfinished.len(),
            "resuming asynchronous requests accepted before the last stop"
        );
    }
    for job in unfinished {
        app.jobs.queue(job);
    }
    for _ in 0..app.jobs.workers {
        let app = app.clone();
        let cancel = app.lifecycle.cancel.clone();
        app.lifecycle.clone().spawn(async move {
            loop {
                // A stopping host takes no new job: what is queued runs at
                // the next start. The job in hand is finished.
                let job = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    job = async { app.jobs.receiver.lock().await.recv().await } => job,
                };
                let Some(job) = job else { return };
                run(&app, job).await;
                app.jobs.release();
            }
        });
    }
    // Alone on its store (SQLite), a host has no one to take its jobs
    // from or give them to: its leases matter only to its next start.
    if app.store.shared() {
        spawn_lease_renewal(app.clone());
        let offers = app.store.listen_for_offers().await;
        spawn_search(app, offers);
    }
    Ok(())
}

/// The end of a lease taken now.
fn lease_until(app: &App) -> i64 {
    crate::store::now_millis() + app.jobs.lease.as_millis() as i64
}

/// Renew the leases of the jobs this host runs, a third of a lease apart.
fn spawn_lease_renewal(app: Arc<App>) {
    let cancel = app.lifecycle.cancel.clone();
    app.lifecycle.clone().spawn(async move {
        let mut every = tokio::time::interval(app.jobs.lease / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            let until = lease_until(&app);
            if let Err(error) = app
                .store
                .renew_job_leases(app.jobs.owner.clone(), until)
                .await
            {
                tracing::warn!(%error, "cannot renew the leases of running asynchronous requests");
            }
        }
    });
}

/// Every [`LOOK_EVERY`], and whenever a host offers a job, while a worker
/// is idle, queue jobs other hosts left: queued too long (or, when offered,
/// at all) on a busy host, or held by one that died.
fn spawn_search(app: Arc<App>, mut offers: Option<tokio::sync::mpsc::Receiver<()>>) {
    let cancel = app.lifecycle.cancel.clone();
    app.lifecycle.clone().spawn(async move {
        loop {
            let offered = tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(LOOK_EVERY) => false,
                Some(_) = async {
                    match offers.as_mut() {
                        Some(offers) => offers.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let idle = app.jobs.workers.saturating_sub(app.jobs.pending());
            if idle == 0 {
                continue;
            }
            let now = crate::store::now_millis();
            let queued_before = if offered {
                now
            } else {
                now - QUEUED_GRACE.as_millis() as i64
            };
            let found = app
                .store
                .jobs_to_take(app.jobs.owner.clone(), now, queued_before, idle)
                .await;
            match found {
                Ok(jobs) => {
                    if offered && !jobs.is_empty() {
                        tracing::info!(
                            count = jobs.len(),
                            "taking asynchronous requests a busy host offered"
                        );
                    }
                    // Whether this host runs them is settled when a
                    // worker takes them.
                    for job in jobs {
                        app.jobs.queue(job);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot look for asynchronous requests to take")
                }
            }
        }
    });
}

async fn run(app: &App, job: Job) {
    let id = job.id.clone();
    let start = app
        .store
        .start_job(
            id.clone(),
            app.jobs.max_runs,
            app.jobs.owner.clone(),
            lease_until(app),
        )
        .await;
    match start {
        Ok(JobStart::Run) => {}
        Ok(JobStart::Finished | JobStart::Elsewhere) => return,
        Ok(JobStart::Dead(reason)) => {
            tracing::error!(request_id = %id, %reason, "an asynchronous request is dead");
            app.store.callbacks_due().notify_one();
            return;
        }
        // Not knowing whether it may run, it does not: it stays unfinished
        // and is tried again at the next start.
        Err(error) => {
            tracing::error!(request_id = %id, %error, "cannot mark an asynchronous request running");
            return;
        }
    }
    let generation = app.current.load_full();
    let attributes = serde_json::from_str(&job.attributes).unwrap_or_default();
    let Some(pipeline) = generation.pipelines.get(job.pipeline.as_str()).cloned() else {
        // The pipeline went away in a reload since the request was accepted.
        let record = crate::complete::unknown_pipeline_record(&job, generation.number);
        if let Err(error) = app.store.complete_job(record, None).await {
            tracing::error!(request_id = %id, %error, "cannot complete an asynchronous request");
        }
        return;
    };
    let request = Request {
        id: job.id.clone(),
        pipeline: job.pipeline.clone(),
        input: job.input.clone(),
        attributes,
    };
    let execution = pipeline
        .run(&app.background, generation.number, request)
        .await;
    let completed = crate::complete::complete(
        &app.store,
        &app.metrics,
        &execution,
        job.created_at,
        job.callback.clone(),
        job.team.clone(),
        crate::complete::Mode::Job,
    )
    .await;
    if let (Ok(completed), Some(telemetry)) = (&completed, &app.telemetry) {
        telemetry.request(&completed.record, &execution.trace, job.created_at);
    }
    if let (Ok(completed), Some(team)) = (&completed, &job.team) {
        app.teams.charge(team, completed.record.cost_usd).await;
        app.metrics.team_request(team, completed.record.cost_usd);
    }
    // Not completed: the job stays unfinished and runs again at the next start.
    if let Err(error) = completed {
        tracing::error!(request_id = %id, %error, "cannot complete an asynchronous request");
    }
}
