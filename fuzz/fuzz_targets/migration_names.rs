//! Migration file names and the first-line directive. The input's first line is the file
//! name, the rest its content.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opsplan::schema::files::{NO_TRANSACTION_DIRECTIVE, checksum, directive, parse_file_name};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (name, sql) = text.split_once('\n').unwrap_or((text, ""));

    // A name that parses is exactly `<digits>_<description>.sql`.
    if let Some((digits, description)) = parse_file_name(name) {
        assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
        assert!(!description.is_empty());
        assert_eq!(format!("{digits}_{description}.sql"), name);
    }

    // Only the first line can hold a directive, and the directive there always counts.
    let first_line = sql.lines().next().unwrap_or_default();
    assert_eq!(directive(sql), directive(first_line));
    let marked = format!("{NO_TRANSACTION_DIRECTIVE}\n{sql}");
    assert_eq!(directive(&marked), Ok(true));

    // Checking the file out with CRLF line endings, as git does (a CR before every bare
    // LF), does not change the checksum.
    let mut crlf = String::with_capacity(sql.len() * 2);
    let mut previous = None;
    for c in sql.chars() {
        if c == '\n' && previous != Some('\r') {
            crlf.push('\r');
        }
        crlf.push(c);
        previous = Some(c);
    }
    assert_eq!(checksum(sql), checksum(&crlf));
});
