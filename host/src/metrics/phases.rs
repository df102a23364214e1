//! Where a real-time request's time goes inside the host, phase by phase:
//! `strata_request_phase_seconds{phase}`. The phases follow one another
//! without gaps, from the moment hyper hands the parsed request head to the
//! host until the response is built (what hyper then writes, and the
//! connection before the head, are outside the host's clock):
//!
//! | phase | from | to |
//! | --- | --- | --- |
//! | `receive` | the request head, parsed | the run handed over: routing, authentication, the body read and parsed, admission |
//! | `handoff` | | the run started, plus from its end until the handler resumes (the run is polled in the request's own task, so this is a few microseconds; it moves to a task of its own only if the client stops waiting) |
//! | `run` | the pipeline started | its verdict (each stage is also in `strata_stage_duration_seconds`) |
//! | `keep` | the verdict | the request kept (its record queued, or a ticket or callback made durable) and its view built |
//! | `respond` | the handler resumed | the response built and serialised |
//!
//! A run that panics, outlasts the request timeout or cannot be kept is
//! observed in `receive` only, so those counts may run ahead of the others.

use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A phase of a real-time request inside the host.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Phase {
    /// Routing, authentication, the body read and parsed, admission.
    Receive,
    /// Between the handler and the run: until the run starts, and from its
    /// end until the handler resumes.
    Handoff,
    /// The pipeline, its stages included.
    Run,
    /// The record queued, or a ticket or callback made durable.
    Keep,
    /// The response built and serialised.
    Respond,
}

impl Phase {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Receive => "receive",
            Phase::Handoff => "handoff",
            Phase::Run => "run",
            Phase::Keep => "keep",
            Phase::Respond => "respond",
        }
    }
}

impl EncodeLabelValue for Phase {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.name(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: Phase,
}

/// `strata_request_phase_seconds`.
#[derive(Clone)]
pub(super) struct Phases(Family<PhaseLabels, Histogram, fn() -> Histogram>);

impl Phases {
    /// The family, registered in `registry`.
    pub(super) fn register(registry: &mut Registry) -> Phases {
        // 1 µs to about 8 s: the phases around the stages take microseconds.
        let family: Family<PhaseLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(1e-6, 2.0, 24)));
        registry.register_with_unit(
            "request_phase",
            "A real-time request's time inside the host, by phase",
            Unit::Seconds,
            family.clone(),
        );
        Phases(family)
    }

    pub(super) fn observe(&self, phase: Phase, elapsed: Duration) {
        self.0
            .get_or_create(&PhaseLabels { phase })
            .observe(elapsed.as_secs_f64());
    }
}

/// The instants between the phases of one real-time request's run, taken
/// by the run itself.
#[derive(Clone, Copy, Debug)]
pub struct Laps {
    /// The run started.
    pub started: Instant,
    /// The pipeline gave its verdict.
    pub ran: Instant,
    /// The request was kept.
    pub kept: Instant,
}
