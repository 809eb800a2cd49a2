//! Prompt markers: `[sandbox:NAME]` or `[sandbox:NAMExN]` inside a prompt script one job's faults,
//! so a test can target exactly one job without touching the sandbox's configuration.
//!
//! `xN` means "the first N times, then behave"; without it N is 1. Create-level faults count the
//! create requests that carry the exact same prompt (an engine's retries resend it unchanged);
//! task-level faults count the queries, retrieves or downloads of that task. An unknown marker is
//! refused with 2013 so that a typo in a test cannot silently pass. The full list is in the crate doc.

use crate::wire;

const PREFIX: &str = "[sandbox:";

/// A fault that acts on the create call itself, in the order the markers appear in the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateFault {
    /// Answer `base_resp` with this code (no task).
    Code(i64),
    /// Answer with this HTTP status and an HTML page, as a proxy in front of the API would.
    Http(u16),
    /// Never answer: hold the connection until the client gives up (or the sandbox stops).
    Hang,
}

/// Faults that shape one task after it was created. Kept boxed in the task: most tasks have none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFaults {
    /// The task ends `Fail` with this code instead of `Success`.
    pub fail_code: Option<i64>,
    /// The first N queries answer a truncated JSON body.
    pub malformed_json: u32,
    /// The first N queries answer this `base_resp` code.
    pub query_error: Option<(i64, u32)>,
    /// The first N retrieves answer this `base_resp` code.
    pub retrieve_error: Option<(i64, u32)>,
    /// The links of the first N successful retrieves are already expired.
    pub expired_link: u32,
    /// The first N downloads of the file stop half way.
    pub truncated_download: u32,
    /// The timeline takes this many times the configured latency.
    pub slow_factor: u32,
    /// The task never leaves `Processing`.
    pub stuck: bool,
}

/// Everything the markers of one prompt ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Markers {
    /// Create faults with their counts, consumed in order by successive attempts.
    pub create: Vec<(CreateFault, u32)>,
    /// A code every create with this prompt is refused with (`fail-CODE`, CODE ≠ 1027).
    pub always_refuse: Option<i64>,
    pub task: TaskFaults,
}

impl Markers {
    /// The create fault for the `attempt`-th create (0-based) with this prompt, if any.
    pub fn create_fault(&self, attempt: u64) -> Option<CreateFault> {
        if let Some(code) = self.always_refuse {
            return Some(CreateFault::Code(code));
        }
        let mut left = attempt;
        for &(fault, n) in &self.create {
            if left < u64::from(n) {
                return Some(fault);
            }
            left -= u64::from(n);
        }
        None
    }

    /// The boxed task faults, or None when the task needs none.
    pub fn task_faults(&self) -> Option<Box<TaskFaults>> {
        (self.task != TaskFaults::default()).then(|| Box::new(self.task.clone()))
    }
}

/// Parses every marker in a prompt; `Err` is the 2013 detail naming the first bad marker.
pub fn parse(prompt: &str) -> Result<Markers, String> {
    let mut markers = Markers::default();
    let mut rest = prompt;
    while let Some(start) = rest.find(PREFIX) {
        let after = &rest[start + PREFIX.len()..];
        let Some(end) = after.find(']') else {
            return Err(format!("unterminated sandbox marker {}", &rest[start..]));
        };
        let body = &after[..end];
        apply(&mut markers, body).map_err(|()| format!("unknown sandbox marker [sandbox:{body}]"))?;
        rest = &after[end + 1..];
    }
    Ok(markers)
}

/// Splits "transient-1000x2" into ("transient-1000", 2); a trailing `x` with digits is the count.
fn split_count(body: &str) -> Result<(&str, u32), ()> {
    if let Some(pos) = body.rfind('x') {
        let digits = &body[pos + 1..];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let n = digits.parse().map_err(|_| ())?;
            return Ok((&body[..pos], n));
        }
    }
    Ok((body, 1))
}

fn known_code(text: &str) -> Result<i64, ()> {
    let code: i64 = text.parse().map_err(|_| ())?;
    match wire::code_message(code) {
        Some(_) if code != 0 => Ok(code),
        _ => Err(()),
    }
}

fn apply(m: &mut Markers, body: &str) -> Result<(), ()> {
    let (name, n) = split_count(body)?;
    if let Some(code) = name.strip_prefix("fail-") {
        let code = known_code(code)?;
        if code == wire::OUTPUT_SENSITIVE {
            m.task.fail_code = Some(code);
        } else {
            m.always_refuse = Some(code);
        }
    } else if let Some(code) = name.strip_prefix("task-fail-") {
        m.task.fail_code = Some(known_code(code)?);
    } else if let Some(code) = name.strip_prefix("transient-") {
        m.create.push((CreateFault::Code(known_code(code)?), n));
    } else if let Some(status) = name.strip_prefix("http-") {
        let status: u16 = status.parse().map_err(|_| ())?;
        if !(400..=599).contains(&status) {
            return Err(());
        }
        m.create.push((CreateFault::Http(status), n));
    } else if let Some(code) = name.strip_prefix("query-error-") {
        m.task.query_error = Some((known_code(code)?, n));
    } else if let Some(code) = name.strip_prefix("retrieve-error-") {
        m.task.retrieve_error = Some((known_code(code)?, n));
    } else {
        match name {
            "hang" => m.create.push((CreateFault::Hang, n)),
            "malformed-json" => m.task.malformed_json = n,
            "expired-link" => m.task.expired_link = n,
            "truncated-download" => m.task.truncated_download = n,
            // `slow` = 5x the latency; `slowxN` = N times.
            "slow" => m.task.slow_factor = if body.contains('x') { n } else { 5 },
            "stuck" => m.task.stuck = true,
            _ => return Err(()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_markers() {
        let m = parse("a cat on a skateboard [Pan left]").unwrap();
        assert_eq!(m, Markers::default());
        assert_eq!(m.create_fault(0), None);
        assert!(m.task_faults().is_none());
    }

    #[test]
    fn create_faults_chain_in_order() {
        let m = parse("x [sandbox:http-502x2] [sandbox:transient-1000] y").unwrap();
        let seq: Vec<_> = (0..4).map(|a| m.create_fault(a)).collect();
        assert_eq!(
            seq,
            [Some(CreateFault::Http(502)), Some(CreateFault::Http(502)), Some(CreateFault::Code(1000)), None]
        );
    }

    #[test]
    fn fail_codes() {
        let m = parse("[sandbox:fail-1026]").unwrap();
        assert_eq!(m.create_fault(7), Some(CreateFault::Code(1026)));
        let m = parse("[sandbox:fail-1027]").unwrap();
        assert_eq!(m.create_fault(0), None);
        assert_eq!(m.task.fail_code, Some(1027));
        let m = parse("[sandbox:task-fail-1000]").unwrap();
        assert_eq!(m.task.fail_code, Some(1000));
    }

    #[test]
    fn task_markers() {
        let m = parse("[sandbox:expired-link][sandbox:truncated-downloadx3][sandbox:slow][sandbox:query-error-1002x2]")
            .unwrap();
        assert_eq!(m.task.expired_link, 1);
        assert_eq!(m.task.truncated_download, 3);
        assert_eq!(m.task.slow_factor, 5);
        assert_eq!(m.task.query_error, Some((1002, 2)));
        assert_eq!(parse("[sandbox:slowx2]").unwrap().task.slow_factor, 2);
    }

    #[test]
    fn unknown_markers_are_refused() {
        assert!(parse("[sandbox:fial-1026]").is_err());
        assert!(parse("[sandbox:fail-4242]").is_err());
        assert!(parse("[sandbox:http-200]").is_err());
        assert!(parse("[sandbox:hang").is_err());
    }
}
