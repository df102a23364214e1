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

use std::sync::Arc;
use std::sync::atomic::Ordering;

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
    // The receiver lives as long as the app; a send cannot fail before.
    let _ = app.jobs.sender.send(job);
    Ok(())
}

/// Queue the requests a previous run accepted and did not complete, and
/// start the workers.
pub async fn start(app: Arc<App>) -> Result<(), StoreError> {
    let unfinished = app.store.unfinished_jobs().await?;
    if !unfinished.is_empty() {
        tracing::info!(
            count = unfinished.len(),
            "resuming asynchronous requests accepted before the last stop"
        );
    }
    for job in unfinished {
        app.jobs.pending.fetch_add(1, Ordering::AcqRel);
        let _ = app.jobs.sender.send(job);
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
    Ok(())
}

async fn run(app: &App, job: Job) {
    let id = job.id.clone();
    match app.store.start_job(id.clone(), app.jobs.max_runs).await {
        Ok(JobStart::Run) => {}
        Ok(JobStart::Finished) => return,
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
