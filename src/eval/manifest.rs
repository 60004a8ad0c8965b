//! What a result was produced from, recorded with every run, so a result
//! can be reproduced and two results told apart.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::cache::sha256_hex;

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub safeguard_version: String,
    pub mlx_version: String,
    pub device: String,
    /// None when results were scored from a file (`--results`).
    pub model: Option<ModelInfo>,
    pub policy: FileInfo,
    pub dataset: FileInfo,
    pub results_file: Option<FileInfo>,
    pub effort: String,
    pub temperature: f32,
    pub seed: u64,
    pub max_tokens: usize,
    /// The `--dtype` asked for (auto: float32 on CPU, the checkpoint's on GPU).
    pub dtype: String,
    /// `--cpu-kernels`: exact (ours) or mlx.
    pub cpu_kernels: String,
    /// `--constrain`: answers held to the policy's declared output, so no
    /// parse failures.
    pub constrain: bool,
    /// The result cache this run read and wrote.
    pub cache: Option<String>,
    /// UTC, ISO 8601.
    pub date: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// As given to `-m`.
    pub name: String,
    pub path: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    pub name: String,
    pub path: Option<String>,
    pub sha256: String,
}

impl FileInfo {
    pub fn of_file(path: &Path, bytes: &[u8]) -> FileInfo {
        FileInfo {
            name: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            path: Some(path.display().to_string()),
            sha256: sha256_hex(bytes),
        }
    }
}

/// Identifies a model folder's contents without reading its weights
/// (gigabytes): the sha256 of every file's name, size and modification
/// time. Hub snapshots are named by their revision, so this follows it.
pub fn model_fingerprint(dir: &Path) -> std::io::Result<String> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = std::fs::metadata(entry.path())?;
        if !meta.is_file() {
            continue;
        }
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        entries.push(format!(
            "{}\t{}\t{modified}",
            entry.file_name().to_string_lossy(),
            meta.len()
        ));
    }
    entries.sort();
    Ok(sha256_hex(entries.join("\n").as_bytes()))
}

/// The current time in UTC as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The Gregorian date `days` after 1970-01-01 (Hinnant's algorithm: eras of
/// 400 years, years starting in March so the leap day comes last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_match_known_days() {
        // Days since 1970-01-01, counted with Python's datetime.date.
        for (days, date) in [
            (0, (1970, 1, 1)),
            (11_016, (2000, 2, 29)),
            (20_789, (2026, 12, 2)),
            (-1, (1969, 12, 31)),
        ] {
            assert_eq!(super::civil_from_days(days), date, "{days}");
        }
    }
}
