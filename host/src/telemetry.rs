//! Traces in OpenTelemetry: with `[telemetry] otlp` set, every finished
//! request becomes a trace, a `strata.request` span with one child span
//! per stage that ran, exported over OTLP/HTTP (protobuf or JSON) in
//! batches by the maintained `opentelemetry` crates.
//!
//! The spans are built when the request is recorded, from its trace: the
//! request span runs from arrival to the record; the stage spans are laid
//! end to end from the arrival by the time each stage took (stages run one
//! after another), with the stage, layer, digest, version (live, canary)
//! and result as attributes. Export runs on the SDK's own thread; a
//! collector that is down costs dropped spans (logged by the SDK), never a
//! request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Span as _, Status, TraceContextExt as _, Tracer as _, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

use crate::manifest::{OtlpProtocol, TelemetrySettings};
use crate::pipeline::StageRun;
use crate::store::RequestRecord;

/// The exporter of one host.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// The exporter `settings` ask for, or `None` without `otlp`.
    pub fn start(settings: &TelemetrySettings) -> anyhow::Result<Option<Telemetry>> {
        let Some(base) = &settings.otlp else {
            return Ok(None);
        };
        let endpoint = if base.trim_end_matches('/').ends_with("/v1/traces") {
            base.clone()
        } else {
            format!("{}/v1/traces", base.trim_end_matches('/'))
        };
        let protocol = match settings.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        };
        let delay = Duration::from_millis(settings.export_delay_ms);
        let service = settings.service_name.clone();
        // The exporter's blocking HTTP client may not be built on an async
        // runtime's thread.
        let provider = std::thread::spawn(move || -> anyhow::Result<SdkTracerProvider> {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_endpoint(endpoint)
                .build()?;
            let processor = BatchSpanProcessor::builder(exporter)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_scheduled_delay(delay)
                        .build(),
                )
                .build();
            Ok(SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(Resource::builder().with_service_name(service).build())
                .build())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP exporter panicked"))??;
        let tracer = provider.tracer("strata");
        Ok(Some(Telemetry { provider, tracer }))
    }

    /// The trace of one finished request: `record` as kept, `stages` its
    /// stage runs, arrival at `created_at` (Unix milliseconds).
    pub fn request(&self, record: &RequestRecord, stages: &[StageRun], created_at: i64) {
        let start = UNIX_EPOCH + Duration::from_millis(created_at.max(0) as u64);
        let end = SystemTime::now().max(start);
        let mut attributes = vec![
            KeyValue::new("strata.request_id", record.id.clone()),
            KeyValue::new("strata.pipeline", record.pipeline.clone()),
            KeyValue::new("strata.generation", record.generation as i64),
            KeyValue::new("strata.status", record.status.as_str().to_owned()),
            KeyValue::new("strata.cost_usd", record.cost_usd),
        ];
        for (key, value) in [
            ("strata.layer", &record.layer),
            ("strata.stage", &record.stage),
            ("strata.team", &record.team),
        ] {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value.clone()));
            }
        }
        let mut root = self
            .tracer
            .span_builder("strata.request")
            .with_start_time(start)
            .with_attributes(attributes)
            .start(&self.tracer);
        if record.status.as_str() == "failed" {
            root.set_status(Status::error(record.message.clone().unwrap_or_default()));
        }
        let parent = Context::current_with_span(root);
        let mut at = start;
        for stage in stages {
            let took = stage.elapsed;
            let name = stage.stage.to_string();
            let mut attributes = vec![
                KeyValue::new("strata.stage", name.clone()),
                KeyValue::new("strata.layer", stage.layer.to_string()),
                KeyValue::new("strata.digest", stage.digest.to_string()),
                KeyValue::new("strata.version", stage.version),
                KeyValue::new("strata.result", stage.result),
                KeyValue::new("strata.micros", took.as_micros() as i64),
            ];
            if let Some(failure) = stage.failure {
                attributes.push(KeyValue::new("strata.failure", failure));
            }
            let mut span = self
                .tracer
                .span_builder(format!("stage {name}"))
                .with_start_time(at)
                .with_attributes(attributes)
                .start_with_context(&self.tracer, &parent);
            if stage.result == "failed" {
                span.set_status(Status::error(stage.failure.unwrap_or_default()));
            }
            at += took;
            span.end_with_timestamp(at.min(end).max(start));
        }
        parent.span().end_with_timestamp(end);
    }

    /// Send what is batched and stop (at shutdown).
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "the OTLP exporter did not shut down cleanly");
        }
    }
}
