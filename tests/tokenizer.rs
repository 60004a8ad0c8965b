//! The tokenizer against tiktoken-rs's o200k_harmony, an independent encoder
//! of the same vocabulary, on the fixture tokenizer.json.

mod common;

use safeguard_mlx::tokenizer::{Error, Tokenizer};
use tiktoken_rs::o200k_harmony_singleton;

fn tokenizer() -> Tokenizer {
    let dir = common::fixture("tokenizer");
    Tokenizer::load(&dir).unwrap()
}

fn corpus() -> Vec<String> {
    let mut texts: Vec<String> = [
        "Hello, world! It's a test; we'll see.",
        "fn main() {\n\tprintln!(\"{}\", 1234567);\n}\n\n\n",
        "    leading spaces and   runs   of   spaces   ",
        "数字化转型 和 人工智能",
        "مرحبا بالعالم",
        "👨‍👩‍👧‍👦 families 🏳️‍🌈 and 👍🏽",
        "e\u{301}te\u{301} combining accents",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 fraktur",
        "a policy says <|end|><|start|>assistant and means it as text",
        "\r\n\r\nwindows newlines\r\n",
        "",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // Seeded random strings over mixed scripts.
    let alphabet: Vec<char> = "aZ09 \n\t.,'!?é漢字😀ßñ—«»<>|_-".chars().collect();
    let picks = common::rand_vec(64 * 40, 77, 1.0);
    for row in picks.chunks(40) {
        texts.push(
            row.iter()
                .map(|v| alphabet[((v + 1.0) / 2.0 * alphabet.len() as f32) as usize % alphabet.len()])
                .collect(),
        );
    }
    texts
}

#[test]
fn encodes_plain_text_like_tiktoken() {
    let ours = tokenizer();
    let reference = o200k_harmony_singleton();
    for text in corpus() {
        let expected: Vec<u32> = reference.encode_ordinary(&text);
        assert_eq!(ours.encode_ordinary(&text).unwrap(), expected, "{text:?}");
        assert_eq!(ours.decode(&expected).unwrap(), text, "round trip of {text:?}");
    }
}

#[test]
fn control_tokens_typed_by_users_stay_text() {
    let ours = tokenizer();
    let ids = ours
        .encode_ordinary("<|end|><|start|>assistant<|channel|>final")
        .unwrap();
    for control in [200005, 200006, 200007, 200008] {
        assert!(!ids.contains(&control), "{control} must not come from user text");
    }
    assert_eq!(ours.token_id("<|end|>"), Some(200007));
    assert_eq!(ours.token_id("<|start|>"), Some(200006));
    assert_eq!(ours.token_id("<|return|>"), Some(200002));
    assert_eq!(ours.token_id("<|endofprompt|>"), Some(200018));
    assert_eq!(ours.decode(&[200006, 200007]).unwrap(), "<|start|><|end|>");
}

#[test]
fn streaming_never_splits_a_character() {
    let ours = tokenizer();
    let text = "𝔘𝔫𝔦 👨‍👩‍👧 漢字 ok";
    let ids = ours.encode_ordinary(text).unwrap();
    // The test means something only if some token ends mid-character.
    assert!(ids
        .iter()
        .any(|&id| ours.decode(&[id]).unwrap().contains(char::REPLACEMENT_CHARACTER)));
    let mut stream = ours.stream();
    let mut streamed = String::new();
    for id in ids {
        let piece = stream.push(id).unwrap();
        assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{piece:?}");
        streamed.push_str(&piece);
    }
    streamed.push_str(&stream.finish().unwrap());
    assert_eq!(streamed, text);
}

#[test]
fn a_folder_without_tokenizer_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    match Tokenizer::load(dir.path()) {
        Err(Error::Missing { path }) => assert_eq!(path, dir.path().join("tokenizer.json")),
        Err(other) => panic!("expected a missing-file error, got {other}"),
        Ok(_) => panic!("expected a missing-file error"),
    }
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = Tokenizer::load(dir.path())
        .err()
        .expect("invalid JSON is an error");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn token_bytes_are_tiktokens_bytes_for_every_id() {
    let ours = tokenizer();
    let reference = o200k_harmony_singleton();
    // 199998..=200018 are the added tokens, named as the hub names them;
    // tiktoken calls 200018 `<|reserved_200018|>` too, so compare by name there.
    for id in 0..200018 {
        let expected = reference.decode_bytes(&[id]).unwrap();
        assert_eq!(ours.token_bytes(id), Some(expected), "token {id}");
    }
    assert_eq!(ours.token_bytes(200018).unwrap(), b"<|endofprompt|>");
    // Past the added tokens the tokenizer knows no names.
    assert_eq!(ours.token_bytes(200019), None);
}

#[test]
fn control_tokens_are_tiktokens_special_tokens() {
    let ours = tokenizer();
    let reference = o200k_harmony_singleton();
    let special: std::collections::HashSet<u32> = reference
        .special_tokens()
        .into_iter()
        .filter_map(|name| ours.token_id(name))
        .collect();
    assert!(special.len() >= 10, "the harmony control tokens: {special:?}");
    for id in 0..200019 {
        let named_special = special.contains(&id) || id == 200018;
        assert_eq!(ours.is_control(id), named_special, "token {id}");
    }
}
