//! Human and JSON rendering.

use std::io::{IsTerminal, Write};

use secureev_dbus::{Ecu, ErrorCode, HistoryEntry, PendingUpdate, Precondition, Progress};
use serde_json::{json, Value};

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds (0 → `never`).
pub fn time(unix: i64) -> String {
    if unix <= 0 {
        return "never".into();
    }
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Human size (`4.0 MiB`).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `[22 rollback-attack]`, or the bare number for codes this version does not know.
pub fn code(code: u32) -> String {
    match ErrorCode::from_u32(code) {
        Some(c) => format!("[{} {}]", code, c.name()),
        None => format!("[{code}]"),
    }
}

/// JSON for `Progress`.
pub fn progress_json(p: &Progress) -> Value {
    json!({
        "percent": p.percent, "phase": p.phase, "bytes-done": p.bytes_done,
        "bytes-total": p.bytes_total, "ecu": p.ecu, "message": p.message,
    })
}

/// JSON for one pending update entry.
pub fn pending_json(u: &PendingUpdate) -> Value {
    json!({
        "update-id": u.update_id, "ecu-serial": u.ecu_serial, "hardware-id": u.hardware_id,
        "target": u.target, "version": u.version, "release-counter": u.release_counter,
        "size": u.size, "sha256": u.sha256, "release-notes": u.release_notes,
    })
}

/// JSON for one ECU.
pub fn ecu_json(e: &Ecu) -> Value {
    json!({
        "serial": e.serial, "hardware-id": e.hardware_id,
        "installed-version": e.installed_version, "installed-target": e.installed_target,
        "installed-release-counter": e.installed_release_counter, "primary": e.primary,
        "transport": e.transport, "status": e.status, "last-contact": e.last_contact,
    })
}

/// JSON for one precondition.
pub fn precondition_json(p: &Precondition) -> Value {
    json!({ "name": p.name, "satisfied": p.satisfied, "reason": p.reason })
}

/// JSON for one history entry.
pub fn history_json(h: &HistoryEntry) -> Value {
    json!({
        "time": h.time, "action": h.action, "update-id": h.update_id,
        "ecu-serial": h.ecu_serial, "version": h.version,
        "release-counter": h.release_counter, "code": h.code,
        "code-name": ErrorCode::from_u32(h.code).map(|c| c.name()), "message": h.message,
        "transaction-id": h.transaction_id,
    })
}

/// A version for a person: `2.4.1 (#12)`, `#12` without a human version,
/// `?` when neither is known (release counter 0 and no version).
pub fn version_label(version: &str, release_counter: u64) -> String {
    match (version.is_empty(), release_counter) {
        (true, 0) => "?".to_owned(),
        (true, rc) => format!("#{rc}"),
        (false, 0) => version.to_owned(),
        (false, rc) => format!("{version} (#{rc})"),
    }
}

/// Prints the pending update for a person.
pub fn print_plan(id: &str, updates: &[PendingUpdate], ecus: &[Ecu]) {
    println!("Pending update {id}");
    for u in updates {
        let from = ecus
            .iter()
            .find(|e| e.serial == u.ecu_serial)
            .map(|e| version_label(&e.installed_version, e.installed_release_counter))
            .unwrap_or_else(|| "?".to_owned());
        println!(
            "  {:<12} {:<14} {} -> {}  {} ({})",
            u.ecu_serial,
            u.hardware_id,
            from,
            version_label(&u.version, u.release_counter),
            u.target,
            size(u.size)
        );
        for line in u.release_notes.lines() {
            println!("      {line}");
        }
    }
}

/// Renders live progress: a redrawn bar on a terminal, one line per change otherwise.
pub struct ProgressView {
    tty: bool,
    last_line: String,
    drawn: bool,
}

impl ProgressView {
    /// A view on stdout.
    pub fn new() -> Self {
        ProgressView {
            tty: std::io::stdout().is_terminal(),
            last_line: String::new(),
            drawn: false,
        }
    }

    /// Shows `state` and `progress`.
    pub fn show(&mut self, state: &str, p: &Progress) {
        const WIDTH: usize = 30;
        let percent = p.percent.min(100) as usize;
        let filled = percent * WIDTH / 100;
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH - filled));
        let mut line = format!("[{bar}] {percent:>3}% {state}");
        if p.bytes_total > 0 {
            line.push_str(&format!(" {}/{}", size(p.bytes_done), size(p.bytes_total)));
        }
        if !p.ecu.is_empty() {
            line.push_str(&format!(" {}", p.ecu));
        }
        if !p.message.is_empty() {
            line.push_str(&format!(" - {}", p.message));
        }
        if line == self.last_line {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r{line}\x1b[K");
            self.drawn = true;
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        self.last_line = line;
    }

    /// Ends the bar line before other output.
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            println!();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_sizes() {
        assert_eq!(time(0), "never");
        assert_eq!(time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(time(1_764_140_000), "2025-11-26 06:53:20 UTC");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(4 * 1024 * 1024), "4.0 MiB");
        assert_eq!(code(22), "[22 rollback-attack]");
        assert_eq!(code(999), "[999]");
    }
}
