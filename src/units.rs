//! Sizes and durations in words, as the interface we keep prints them.

/// `1h 1m`-style durations, the two largest units.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `1.00 GB`-style sizes (powers of 1024), as the interface we keep prints them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_interface() {
        assert_eq!(human_size(1_073_741_824), "1.00 GB");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.50 KB");
        assert_eq!(human_duration(3661), "1h 1m");
    }
}
