//! Review tickets: escalations and proposed corrections, claimed,
//! resolved or rejected by reviewers.

use serde::Serialize;

use super::sql::{Conn, Json, Row, params};
use super::{
    FeedbackEvent, RequestRecord, Store, StoreError, TicketState, insert_feedback, insert_request,
    now_millis, read_request, upsert_approved,
};

/// A ticket to open for an escalated request.
#[derive(Debug, Clone)]
pub struct NewTicket {
    /// Why the request was escalated.
    pub reason: String,
    /// The proposed answer, if any.
    pub draft: Option<String>,
}

/// What a ticket asks of a reviewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    /// Answer an escalated request.
    Escalation,
    /// Accept or reject a client's proposed correction of an answer.
    Correction,
}

impl TicketKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketKind::Escalation => "escalation",
            TicketKind::Correction => "correction",
        }
    }

    pub(super) fn parse(text: &str) -> Result<TicketKind, StoreError> {
        match text {
            "escalation" => Ok(TicketKind::Escalation),
            "correction" => Ok(TicketKind::Correction),
            other => Err(StoreError::Database(format!(
                "unknown ticket kind \"{other}\""
            ))),
        }
    }
}

/// A review ticket as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Ticket {
    /// Ticket number.
    pub id: i64,
    /// What the reviewer is asked to do.
    pub kind: TicketKind,
    /// The escalated request, or the request whose answer a correction
    /// proposes to change.
    pub request_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// The stage that escalated, if one did.
    pub stage: Option<String>,
    /// Why.
    pub reason: String,
    /// The proposed answer (for a correction, the proposed text).
    pub draft: Option<String>,
    /// Who proposed a correction (a client's token fingerprint, or
    /// `anonymous`).
    pub proposed_by: Option<String>,
    /// The request input as the reviewer should see it.
    pub input: String,
    /// The request attributes.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Where it stands (`rejected`: a correction turned down).
    pub state: TicketState,
    /// The reviewer who claimed it.
    pub claimed_by: Option<String>,
    /// When it was claimed.
    pub claimed_at: Option<i64>,
    /// The reviewer's answer.
    pub resolution: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When it was resolved.
    pub resolved_at: Option<i64>,
    /// When it was opened.
    pub created_at: i64,
    /// The answer-bank key a stage named for the request's answer; the
    /// resolution is approved there.
    pub remember_key: Option<String>,
}

/// Open the ticket of an escalated request. A retried request (same id)
/// that escalates again gets the ticket it already has.
pub(super) fn open_ticket(
    conn: &mut Conn<'_>,
    record: &RequestRecord,
    ticket: &NewTicket,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO tickets (request_id, pipeline, stage, reason, draft, state, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6)
         ON CONFLICT (request_id) WHERE kind = 'escalation' DO NOTHING",
        params![
            record.id,
            record.pipeline,
            record.stage,
            ticket.reason,
            ticket.draft,
            record.created_at
        ],
    )?;
    conn.query_row(
        "SELECT id FROM tickets WHERE request_id = ?1 AND kind = 'escalation'",
        params![record.id],
        |row| row.get(0),
    )
}

/// Which tickets to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketFilter {
    /// Open or claimed: everything still waiting for an answer.
    Pending,
    /// Only tickets in this state.
    State(TicketState),
}

pub(super) const TICKET_SELECT: &str = "
    SELECT t.id, t.request_id, t.pipeline, t.stage, t.reason, t.draft, r.input, r.attributes,
           t.state, t.claimed_by, t.claimed_at, t.resolution, t.resolved_by, t.resolved_at,
           t.created_at, r.remember_key, t.kind, t.proposed_by
    FROM tickets t JOIN requests r ON r.id = t.request_id";

pub(super) fn ticket_from_row(row: &Row<'_>) -> Result<Ticket, StoreError> {
    Ok(Ticket {
        id: row.get(0)?,
        kind: TicketKind::parse(&row.get::<String>(16)?)?,
        proposed_by: row.get(17)?,
        request_id: row.get(1)?,
        pipeline: row.get(2)?,
        stage: row.get(3)?,
        reason: row.get(4)?,
        draft: row.get(5)?,
        input: row.get(6)?,
        attributes: row.get::<Json<_>>(7)?.0,
        state: row.get(8)?,
        claimed_by: row.get(9)?,
        claimed_at: row.get(10)?,
        resolution: row.get(11)?,
        resolved_by: row.get(12)?,
        resolved_at: row.get(13)?,
        remember_key: row.get(15)?,
        created_at: row.get(14)?,
    })
}

pub(super) fn read_ticket(conn: &mut Conn<'_>, id: i64) -> Result<Option<Ticket>, StoreError> {
    conn.query_opt(
        &format!("{TICKET_SELECT} WHERE t.id = ?1"),
        params![id],
        ticket_from_row,
    )
}

/// Apply an accepted correction: the dataset gets it, and the request's
/// answer-bank key (if any) gets it as its approved answer.
pub(super) fn accept_correction(
    conn: &mut Conn<'_>,
    ticket: &Ticket,
    answer: &str,
    reviewer: &str,
) -> Result<(), StoreError> {
    let output: Option<String> = conn.query_row(
        "SELECT output FROM requests WHERE id = ?1",
        params![ticket.request_id],
        |row| row.get(0),
    )?;
    insert_feedback(
        conn,
        &FeedbackEvent {
            kind: "correction".to_owned(),
            request_id: ticket.request_id.clone(),
            pipeline: ticket.pipeline.clone(),
            key: ticket.remember_key.clone(),
            input: ticket.input.clone(),
            answer: output,
            rating: Some("bad".to_owned()),
            correction: Some(answer.to_owned()),
            actor: reviewer.to_owned(),
        },
    )?;
    if let Some(key) = &ticket.remember_key {
        upsert_approved(
            conn,
            &ticket.pipeline,
            key,
            answer,
            "correction",
            reviewer,
            &ticket.request_id,
        )?;
    }
    Ok(())
}

/// Say why a claim or resolution changed nothing.
/// The ticket as a state change left it, or, when the change touched no
/// row (`changed` is 0), why it was refused.
fn after_update(conn: &mut Conn<'_>, ticket: i64, changed: usize) -> Result<Ticket, StoreError> {
    if changed == 0 {
        return Err(explain_refusal(conn, ticket)?);
    }
    read_ticket(conn, ticket)?.ok_or_else(|| StoreError::NotFound(format!("ticket {ticket}")))
}

pub(super) fn explain_refusal(conn: &mut Conn<'_>, ticket: i64) -> Result<StoreError, StoreError> {
    let Some(current) = read_ticket(conn, ticket)? else {
        return Ok(StoreError::NotFound(format!("ticket {ticket}")));
    };
    Ok(match current.state {
        TicketState::Resolved => StoreError::Conflict(format!(
            "ticket {ticket} is already resolved by {}",
            current.resolved_by.unwrap_or_default()
        )),
        TicketState::Rejected => StoreError::Conflict(format!(
            "ticket {ticket} was already rejected by {}",
            current.resolved_by.unwrap_or_default()
        )),
        TicketState::Open => StoreError::Conflict(format!("ticket {ticket} is not claimed")),
        _ => StoreError::Conflict(format!(
            "ticket {ticket} is claimed by {}",
            current.claimed_by.unwrap_or_default()
        )),
    })
}

impl Store {
    /// Record an escalated request and open its ticket; returns the ticket
    /// number once both are committed.
    pub async fn escalate(
        &self,
        record: RequestRecord,
        ticket: NewTicket,
    ) -> Result<i64, StoreError> {
        self.write(move |conn| {
            insert_request(conn, &record)?;
            open_ticket(conn, &record, &ticket)
        })
        .await
    }

    /// Claim a ticket for `reviewer`. Claiming a ticket one already holds is
    /// not an error.
    pub async fn claim(&self, ticket: i64, reviewer: String) -> Result<Ticket, StoreError> {
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE tickets SET state = 'claimed', claimed_by = ?2, claimed_at = ?3
                 WHERE id = ?1 AND (state = 'open' OR (state = 'claimed' AND claimed_by = ?2))",
                params![ticket, reviewer, now_millis()],
            )?;
            after_update(conn, ticket, changed)
        })
        .await
    }

    /// Put a claimed ticket back in the queue, unclaimed. Only the reviewer
    /// holding it may, unless `anyone` (an admin freeing a ticket a reviewer
    /// left).
    pub async fn release(
        &self,
        ticket: i64,
        reviewer: String,
        anyone: bool,
    ) -> Result<Ticket, StoreError> {
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE tickets SET state = 'open', claimed_by = NULL, claimed_at = NULL
                 WHERE id = ?1 AND state = 'claimed' AND (claimed_by = ?2 OR ?3)",
                params![ticket, reviewer, anyone],
            )?;
            after_update(conn, ticket, changed)
        })
        .await
    }

    /// Resolve a ticket with the reviewer's answer, which becomes the
    /// request's answer. An open ticket may be resolved directly; a claimed
    /// one only by the reviewer holding it.
    pub async fn resolve(
        &self,
        ticket: i64,
        reviewer: String,
        answer: String,
    ) -> Result<Ticket, StoreError> {
        let resolved = self
            .write(move |conn| {
                let now = now_millis();
                let changed = conn.execute(
                    "UPDATE tickets SET state = 'resolved', resolution = ?2, resolved_by = ?3,
                        resolved_at = ?4,
                        claimed_by = COALESCE(claimed_by, ?3), claimed_at = COALESCE(claimed_at, ?4)
                 WHERE id = ?1 AND (state = 'open' OR (state = 'claimed' AND claimed_by = ?3))",
                    params![ticket, answer, reviewer, now],
                )?;
                let resolved = after_update(conn, ticket, changed)?;
                if resolved.kind == TicketKind::Correction {
                    // An accepted correction changes the bank, not the request:
                    // the client was answered long ago.
                    accept_correction(conn, &resolved, &answer, &reviewer)?;
                    return Ok(resolved);
                }
                conn.execute(
                    "UPDATE requests SET status = 'answered', output = ?2, confidence = 1.0,
                        stage = NULL, layer = 'human', completed_at = ?3
                 WHERE id = (SELECT request_id FROM tickets WHERE id = ?1)",
                    params![ticket, answer, now],
                )?;
                // The request is final now: a waiting callback becomes due.
                conn.execute(
                    "UPDATE callbacks SET state = 'pending', next_at = ?2
                 WHERE request_id = ?1 AND state = 'waiting'",
                    params![resolved.request_id, now],
                )?;
                // The resolution is part of the training set, and the approved
                // answer of the request's answer-bank key.
                insert_feedback(
                    conn,
                    &FeedbackEvent {
                        kind: "resolution".to_owned(),
                        request_id: resolved.request_id.clone(),
                        pipeline: resolved.pipeline.clone(),
                        key: resolved.remember_key.clone(),
                        input: resolved.input.clone(),
                        answer: resolved.draft.clone(),
                        rating: None,
                        correction: Some(answer.clone()),
                        actor: reviewer.clone(),
                    },
                )?;
                if let Some(key) = &resolved.remember_key {
                    upsert_approved(
                        conn,
                        &resolved.pipeline,
                        key,
                        &answer,
                        "human",
                        &reviewer,
                        &resolved.request_id,
                    )?;
                }
                Ok(resolved)
            })
            .await?;
        self.callbacks_due.notify_one();
        Ok(resolved)
    }

    /// Open a correction ticket: a client's proposed answer for a request,
    /// which changes nothing until a reviewer accepts it. Returns the ticket
    /// and the request as recorded.
    pub async fn propose_correction(
        &self,
        request_id: String,
        correction: String,
        actor: String,
    ) -> Result<(Ticket, RequestRecord), StoreError> {
        self.write(move |conn| {
            let (record, _) = read_request(conn, &request_id)?
                .ok_or_else(|| StoreError::NotFound(format!("request \"{request_id}\"")))?;
            let id: i64 = conn.query_row(
                "INSERT INTO tickets (request_id, kind, pipeline, stage, reason, draft, state,
                                      created_at, proposed_by)
                 VALUES (?1, 'correction', ?2, ?3, ?4, ?5, 'open', ?6, ?7)
                 RETURNING id",
                params![
                    record.id,
                    record.pipeline,
                    record.stage,
                    format!("{actor} proposes a correction of this answer"),
                    correction,
                    now_millis(),
                    actor
                ],
                |row| row.get(0),
            )?;
            insert_feedback(
                conn,
                &FeedbackEvent {
                    kind: "proposal".to_owned(),
                    request_id: record.id.clone(),
                    pipeline: record.pipeline.clone(),
                    key: record.remember_key.clone(),
                    input: record.input.clone(),
                    answer: record.output.clone(),
                    rating: Some("bad".to_owned()),
                    correction: Some(correction),
                    actor,
                },
            )?;
            let ticket = read_ticket(conn, id)?
                .ok_or_else(|| StoreError::NotFound(format!("ticket {id}")))?;
            Ok((ticket, record))
        })
        .await
    }

    /// Reject a proposed correction: nothing changes but the ticket. Only
    /// a correction ticket may be rejected, and a claimed one only by the
    /// reviewer holding it.
    pub async fn reject_correction(
        &self,
        ticket: i64,
        reviewer: String,
        note: Option<String>,
    ) -> Result<Ticket, StoreError> {
        self.write(move |conn| {
            let kind = read_ticket(conn, ticket)?.map(|t| t.kind);
            if kind == Some(TicketKind::Escalation) {
                return Err(StoreError::Conflict(format!(
                    "ticket {ticket} is an escalation: answer it with /resolve; only a proposed \
                     correction can be rejected"
                )));
            }
            let now = now_millis();
            let changed = conn.execute(
                "UPDATE tickets SET state = 'rejected', resolution = ?2, resolved_by = ?3,
                        resolved_at = ?4,
                        claimed_by = COALESCE(claimed_by, ?3), claimed_at = COALESCE(claimed_at, ?4)
                 WHERE id = ?1 AND kind = 'correction'
                   AND (state = 'open' OR (state = 'claimed' AND claimed_by = ?3))",
                params![ticket, note, reviewer, now],
            )?;
            after_update(conn, ticket, changed)
        })
        .await
    }

    /// One ticket.
    pub async fn ticket(&self, id: i64) -> Result<Option<Ticket>, StoreError> {
        self.read(move |conn| read_ticket(conn, id)).await
    }

    /// Tickets matching `filter`, oldest first, at most `limit`.
    pub async fn tickets(
        &self,
        filter: TicketFilter,
        limit: u32,
    ) -> Result<Vec<Ticket>, StoreError> {
        self.read(move |conn| {
            let (clause, state) = match filter {
                TicketFilter::Pending => ("t.state IN ('open', 'claimed')", None),
                TicketFilter::State(state) => ("t.state = ?2", Some(state.as_str())),
            };
            let sql = format!("{TICKET_SELECT} WHERE {clause} ORDER BY t.id LIMIT ?1");
            match state {
                None => conn.query_map(&sql, params![limit], ticket_from_row),
                Some(state) => conn.query_map(&sql, params![limit, state], ticket_from_row),
            }
        })
        .await
    }
}
