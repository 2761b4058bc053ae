//! The statement splitter, in every dialect: it never panics, and each statement it
//! returns is a piece of the input at the offset and line it claims, in file order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use opsplan::schema::Dialect;
use opsplan::schema::split::split;

/// How many leading words a statement keeps for classification.
const WORDS_KEPT: usize = 12;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    for dialect in [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql] {
        let mut end_of_previous = 0;
        for statement in split(sql, dialect) {
            let offset = statement.offset;
            assert!(
                offset >= end_of_previous,
                "{dialect:?}: statement at {offset} overlaps the one before"
            );
            assert!(
                sql.get(offset..)
                    .is_some_and(|rest| rest.starts_with(&statement.text)),
                "{dialect:?}: {:?} is not the input at byte {offset}",
                statement.text
            );
            assert_eq!(
                statement.line,
                sql[..offset].matches('\n').count() + 1,
                "{dialect:?}: wrong line for the statement at byte {offset}"
            );
            assert!(statement.words.len() <= WORDS_KEPT);
            for word in &statement.words {
                assert!(!word.is_empty());
                assert!(
                    word.bytes().all(|b| {
                        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'$'
                    }),
                    "{dialect:?}: word {word:?} is not an upper-cased SQL word"
                );
            }
            end_of_previous = offset + statement.text.len();
        }
    }
});
