//! Teams of clients (`[teams.NAME]`): each request a team's token makes is
//! the team's. Before it runs it must be for a pipeline the team may call,
//! within the team's requests per minute (counted on this host and, in a
//! cluster, the others), and within
//! its daily and monthly model spend; a team over a budget is refused
//! (429 `budget_exhausted`) or, with `over_budget = "cheap_layers"`, served
//! with model calls off, so rules, the answer bank and people answer. Its
//! requests are recorded with the team, so spend is summed from the
//! records, and `GET /admin/teams` shows it against the budgets.
//!
//! Hosts of a cluster (`[shared]`) add each other's counts (requests in the
//! last minute, spend today and this month), shared every second by
//! `crate::cluster`: a team's limits hold for the cluster, at most a couple
//! of seconds late.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::Caller;
use crate::http::ApiError;
use crate::manifest::{Manifest, OverBudget, TeamSpec};
use crate::store::Store;

/// The prefix of a team caller's id: `team:NAME`.
const CALLER_PREFIX: &str = "team:";

/// How a request may run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// The team it is counted against.
    pub team: Option<String>,
    /// Served by the cheap layers only: model calls off.
    pub cheap_only: bool,
}

/// Per-host team state: the recent requests each team made, and its spend
/// so far today and this month. The spend is read from the request records
/// once per period, then kept up to date as requests complete here (the
/// records are written behind the response, so reading them for every
/// request would miss the last ones).
#[derive(Default)]
pub struct Teams {
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
    spent: tokio::sync::Mutex<HashMap<String, Tally>>,
    /// The other hosts' counts, summed, per team (`[shared]`).
    others: Mutex<HashMap<String, TeamCounts>>,
}

/// One host's counts of one team, as shared with the others of a cluster
/// (or the other hosts' sum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TeamCounts {
    /// Requests admitted in the last minute.
    pub last_minute: u64,
    /// The start of the day the spend is for (Unix milliseconds).
    pub day: i64,
    /// The start of the month the spend is for (Unix milliseconds).
    pub month: i64,
    /// Model spend that day.
    pub today_usd: f64,
    /// Model spend that month.
    pub month_usd: f64,
}

impl TeamCounts {
    /// Add `other`'s counts; spend only if it is for the same periods.
    pub fn add(&mut self, other: &TeamCounts) {
        let usd = |value: f64| {
            if value.is_finite() {
                value.max(0.0)
            } else {
                0.0
            }
        };
        self.last_minute = self.last_minute.saturating_add(other.last_minute);
        if other.day == self.day {
            self.today_usd += usd(other.today_usd);
        }
        if other.month == self.month {
            self.month_usd += usd(other.month_usd);
        }
    }
}

/// A team's spend in the current periods.
#[derive(Debug, Clone, Copy)]
struct Tally {
    day: i64,
    month: i64,
    today_usd: f64,
    month_usd: f64,
}

/// The team whose token `authorization` (`Bearer TOKEN`) carries, if any.
/// Every team's token is compared, in constant time.
pub fn team_of_token<'a>(manifest: &'a Manifest, authorization: &[u8]) -> Option<&'a TeamSpec> {
    if manifest.teams.is_empty() {
        return None;
    }
    let token = std::str::from_utf8(authorization)
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for team in manifest.teams.values() {
        if bool::from(team.token.ct_eq(&digest)) {
            found = Some(team);
        }
    }
    found
}

/// The caller a team's token stands for.
pub fn caller(team: &TeamSpec) -> Caller {
    Caller {
        id: format!("{CALLER_PREFIX}{}", team.name),
        token: Some(crate::auth::Role::Client),
    }
}

impl Teams {
    /// Decide whether `caller` may run a request on `pipeline` now, and how.
    /// A caller that is no team's runs as ever.
    pub async fn admit(
        &self,
        store: &Store,
        manifest: &Manifest,
        caller: &Caller,
        pipeline: &str,
    ) -> Result<Admission, ApiError> {
        let Some(name) = caller.id.strip_prefix(CALLER_PREFIX) else {
            return Ok(Admission::default());
        };
        let Some(team) = manifest.teams.get(name) else {
            // The token matched a team of the generation that authorised
            // it, since reloaded away.
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!("team \"{name}\" no longer exists"),
            ));
        };
        if let Some(allowed) = &team.pipelines
            && !allowed.contains(pipeline)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "team \"{name}\" may not call pipeline \"{pipeline}\"; it may call: {}",
                    allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if let Some(limit) = team.requests_per_minute {
            self.take_slot(name, limit)?;
        }
        let mut admission = Admission {
            team: Some(name.to_owned()),
            cheap_only: false,
        };
        if let Some(over) = self.over_budget(store, team).await? {
            match team.over_budget {
                OverBudget::Refuse => {
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "budget_exhausted",
                        format!("team \"{name}\" {over}"),
                    ));
                }
                OverBudget::CheapLayers => admission.cheap_only = true,
            }
        }
        Ok(admission)
    }

    /// This host's own counts of every team it has admitted or charged.
    pub async fn own_counts(&self) -> Vec<(String, TeamCounts)> {
        let (day, month) = period_starts(crate::store::now_millis());
        let mut counts: HashMap<String, TeamCounts> = HashMap::new();
        let fresh = || TeamCounts {
            day,
            month,
            ..TeamCounts::default()
        };
        {
            let now = Instant::now();
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            for (team, window) in recent.iter_mut() {
                prune(window, now);
                counts.entry(team.clone()).or_insert_with(fresh).last_minute = window.len() as u64;
            }
        }
        for (team, tally) in self.spent.lock().await.iter() {
            let entry = counts.entry(team.clone()).or_insert_with(fresh);
            if tally.day == day {
                entry.today_usd = tally.today_usd;
            }
            if tally.month == month {
                entry.month_usd = tally.month_usd;
            }
        }
        counts.into_iter().collect()
    }

    /// Count the other hosts' `counts` of `team` (summed) from now on.
    pub fn set_others(&self, team: &str, counts: TeamCounts) {
        self.others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(team.to_owned(), counts);
    }

    /// Forget the other hosts' counts (the host serves alone).
    pub fn clear_others(&self) {
        self.others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The other hosts' counts of `team` (`[shared]`; none when alone).
    pub fn others(&self, team: &str) -> TeamCounts {
        self.others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(team)
            .copied()
            .unwrap_or_default()
    }

    /// Charge `cost_usd` of a completed request to `team`.
    pub async fn charge(&self, team: &str, cost_usd: f64) {
        if cost_usd <= 0.0 {
            return;
        }
        let (day, month) = period_starts(crate::store::now_millis());
        if let Some(tally) = self.spent.lock().await.get_mut(team)
            && tally.day == day
            && tally.month == month
        {
            tally.today_usd += cost_usd;
            tally.month_usd += cost_usd;
        }
        // Otherwise the next admission reads the records afresh.
    }

    /// `team`'s spend today and this month: the tally, or the records when
    /// there is no tally for the current periods.
    async fn tally(&self, store: &Store, team: &str) -> Result<Tally, ApiError> {
        let (day, month) = period_starts(crate::store::now_millis());
        let mut spent = self.spent.lock().await;
        if let Some(tally) = spent.get(team)
            && tally.day == day
            && tally.month == month
        {
            return Ok(*tally);
        }
        let totals = store.team_spend(team.to_owned(), day, month).await?;
        let tally = Tally {
            day,
            month,
            today_usd: totals.0,
            month_usd: totals.1,
        };
        spent.insert(team.to_owned(), tally);
        Ok(tally)
    }

    /// Which budget `team` has spent, if any, as a sentence.
    async fn over_budget(
        &self,
        store: &Store,
        team: &TeamSpec,
    ) -> Result<Option<String>, ApiError> {
        if team.usd_per_day.is_none() && team.usd_per_month.is_none() {
            return Ok(None);
        }
        let tally = self.tally(store, &team.name).await?;
        let mut spend = TeamCounts {
            last_minute: 0,
            day: tally.day,
            month: tally.month,
            today_usd: tally.today_usd,
            month_usd: tally.month_usd,
        };
        spend.add(&self.others(&team.name));
        if let Some(budget) = team.usd_per_day
            && spend.today_usd >= budget
        {
            return Ok(Some(format!(
                "has spent ${:.4} of its ${budget:.4} daily budget; it resets at midnight UTC",
                spend.today_usd
            )));
        }
        if let Some(budget) = team.usd_per_month
            && spend.month_usd >= budget
        {
            return Ok(Some(format!(
                "has spent ${:.4} of its ${budget:.4} monthly budget; it resets on the 1st (UTC)",
                spend.month_usd
            )));
        }
        Ok(None)
    }

    /// Count one request against `limit` per minute, or say when the next
    /// one may come.
    fn take_slot(&self, team: &str, limit: u32) -> Result<(), ApiError> {
        let now = Instant::now();
        let others = self.others(team).last_minute;
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let window = recent.entry(team.to_owned()).or_default();
        prune(window, now);
        if window.len() as u64 + others >= u64::from(limit) {
            // The other hosts' requests are counts, not times: with none
            // here, the earliest a slot may free is unknown, so a second.
            let wait = window.front().map_or(Duration::from_secs(1), |oldest| {
                MINUTE - now.duration_since(*oldest)
            });
            let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)) as u32;
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("team \"{team}\" may send {limit} requests a minute; retry in {seconds} s"),
            )
            .retry_after(seconds.max(1)));
        }
        window.push_back(now);
        Ok(())
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// Drop from `window` the requests older than a minute.
fn prune(window: &mut VecDeque<Instant>, now: Instant) {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= MINUTE)
    {
        window.pop_front();
    }
}

/// A team's spend and traffic, today and this month (UTC).
#[derive(Debug, Clone, Serialize)]
pub struct Spend {
    /// Model spend since midnight UTC.
    pub today_usd: f64,
    /// Model spend since the 1st of this month, UTC.
    pub month_usd: f64,
    /// Requests this month.
    pub month_requests: u64,
    /// Of those, answered.
    pub month_answered: u64,
}

/// `team`'s spend from its request records.
pub async fn spend(store: &Store, team: &str) -> Result<Spend, ApiError> {
    let now = crate::store::now_millis();
    let (day, month) = period_starts(now);
    let totals = store.team_spend(team.to_owned(), day, month).await?;
    Ok(Spend {
        today_usd: totals.0,
        month_usd: totals.1,
        month_requests: totals.2,
        month_answered: totals.3,
    })
}

/// The starts of the UTC day and month `millis` falls in.
pub fn period_starts(millis: i64) -> (i64, i64) {
    const DAY: i64 = 86_400_000;
    let days = millis.div_euclid(DAY);
    let (year, month, _) = civil_from_days(days);
    (days * DAY, days_from_civil(year, month, 1) * DAY)
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic
/// Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_midnight_and_on_the_first_utc() {
        // 2026-11-29T19:05:15Z.
        let now = 1_795_979_115_000;
        let (day, month) = period_starts(now);
        assert_eq!(day, 1_795_910_400_000, "2026-11-29T00:00:00Z");
        assert_eq!(month, 1_793_491_200_000, "2026-11-01T00:00:00Z");
        // Leap day and the turn of a year.
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            civil_from_days(days_from_civil(2025, 12, 31) + 1),
            (2026, 1, 1)
        );
        assert_eq!(period_starts(0), (0, 0));
    }

    #[test]
    fn a_team_gets_its_requests_per_minute_and_no_more() {
        let teams = Teams::default();
        for _ in 0..3 {
            teams.take_slot("a", 3).unwrap();
        }
        let refused = teams.take_slot("a", 3).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        // Another team has its own minute.
        teams.take_slot("b", 3).unwrap();
    }

    #[tokio::test]
    async fn other_hosts_requests_and_spend_count_against_a_team() {
        let teams = Teams::default();
        teams.take_slot("a", 3).unwrap();
        let own = teams.own_counts().await;
        assert_eq!(own.len(), 1);
        assert_eq!((own[0].0.as_str(), own[0].1.last_minute), ("a", 1));
        let (day, month) = period_starts(crate::store::now_millis());
        teams.set_others(
            "a",
            TeamCounts {
                last_minute: 2,
                day,
                month,
                today_usd: 1.5,
                month_usd: 2.5,
            },
        );
        let refused = teams.take_slot("a", 3).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        teams.clear_others();
        teams.take_slot("a", 3).unwrap();

        // Spend adds up only for the same periods.
        let mut sum = TeamCounts {
            day,
            month,
            today_usd: 1.0,
            month_usd: 1.0,
            ..TeamCounts::default()
        };
        sum.add(&TeamCounts {
            day: day - 86_400_000,
            month,
            today_usd: 5.0,
            month_usd: 5.0,
            last_minute: 4,
        });
        assert_eq!(
            (sum.today_usd, sum.month_usd, sum.last_minute),
            (1.0, 6.0, 4)
        );
    }
}
