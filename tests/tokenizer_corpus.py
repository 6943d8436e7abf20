"""The text corpus the tokenizer exactness tests compare on (built here, deterministic).

Several scripts and languages, code, emoji with ZWJ sequences and modifiers,
runs of spaces/tabs/newlines, digits and long numbers, leading and trailing
whitespace, a model's own special-token strings, and random Unicode (fixed seed).
"""
from __future__ import annotations

import random
from typing import List, Sequence

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I can't believe it's already 2024 - we'll see, they've said, you'd know, I'm sure, she'll go.",
    "DON'T SHOUT. It'S fine. We'Re OK. They'VE left.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Fußgänger, Größe.",
    "¿Dónde está la biblioteca? ¡Qué día tan bonito! Año, niño, pingüino.",
    "Привет, как дела? Съешь же ещё этих мягких французских булок.",
    "Γειά σου Κόσμε! Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "שלום עולם, מה שלומך היום?",
    "مرحبا بالعالم، كيف حالك اليوم؟ ١٢٣٤٥٦٧٨٩٠",
    "नमस्ते दुनिया, आप कैसे हैं? ०१२३४५६७८९",
    "বাংলা ভাষা আমার মাতৃভাষা।",
    "ภาษาไทยเขียนติดกันโดยไม่เว้นวรรค สวัสดีครับ",
    "你好，世界！我爱北京天安门。今天天气很好，我们去公园散步吧。",
    "日本語のテキスト：こんにちは、世界。カタカナとひらがなと漢字。",
    "한국어 문장입니다. 안녕하세요, 세계!",
    "Tiếng Việt có dấu: Xin chào thế giới, cảm ơn bạn rất nhiều.",
    "Türkçe: Çalışkan öğrenciler ığdır'a gitti. İstanbul.",
    "Polski: Zażółć gęślą jaźń. Čeština: Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "ქართული ენა, Հայերեն լեզու, ᐃᓄᒃᑎᑐᑦ, ትግርኛ, ᠮᠣᠩᠭᠣᠯ",
    "Math: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ = ∫₀¹ f(t) dt ≈ 3.14159… ≠ ∞ ± ε.",
    "Currency: $100, €200, £300, ¥400, ₹500, ₿0.001; 50% off! #hashtag @user ~tilde~ ^caret^ |pipe|",
    "Full-width: ＡＢＣ　１２３！？ and half-width ｶﾀｶﾅ.",
    "Combining: e\u0301 a\u0300 n\u0303 o\u0308 — Z\u0351\u0307a\u0352l\u0351g\u0368o\u0364.",
    "Quotes: “double” ‘single’ «guillemets» „low“ 「括弧」 『二重』.",
]

CODE = [
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "const x = async () => { await fetch('/api?q=1&r=2'); return {ok: true}; };",
    "<html>\n  <body>\n    <div class=\"main\">Hello &amp; welcome</div>\n  </body>\n</html>",
    '{"name": "edgesdk", "version": "0.1.0", "list": [1, 2.5, -3e10, null, true]}',
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "    if x == 1:\n        pass\n    elif x != 2:\n        y = x ** 2 // 3 % 4\n",
    "git commit -m 'fix: handle CRLF\\r\\n line endings' && ls -la | grep '^d'",
    "fn main() -> Result<(), Box<dyn Error>> { let v: Vec<u8> = vec![0xFF; 16]; Ok(()) }",
    "matrix = [[1,0,0],[0,1,0],[0,0,1]]  # identity\r\n\r\nassert matrix[1][1] == 1",
    "// comment with trailing spaces   \n/* block */\t\t/** doc **/",
    "<p>Some <s>struck</s> and <sub>low</sub> and <code>x</code> text</p>\n<br/>",
]

EMOJI = [
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇫🇷🇯🇵🇺🇸", "1️⃣ 2️⃣ #️⃣", "❤️‍🔥",
    "🧑🏿\u200d🚀 astronaut", "👩🏻\u200d💻 coding", "I ❤ emoji 🎉🎊✨", "😀😃😄😁😆😅🤣😂",
    "🫠🫶🪿🩷", "smile😀smile", "✌️✌🏻✌🏼✌🏽✌🏾✌🏿",
]

WHITESPACE_UNITS = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "\u2009", "\x0b", "\x0c", "\r"]


def _numbers(rng: random.Random) -> List[str]:
    out = []
    for length in range(1, 41):
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        out.append(digits)
        out.append(" " + digits)
        out.append(f"x{digits}y")
    for _ in range(60):
        a = rng.randint(0, 10 ** rng.randint(1, 12))
        b = rng.randint(0, 999999)
        out.append(rng.choice([f"{a}.{b}", f"{a:,}", f"-{a}", f"{a}e-{b % 30}", f"v{a}.{b % 100}.{b % 7}",
                               f"{a}%", f"${a}", f"{a}/{b}", f"0x{a:x}", f"{a} {b}", f"({a})"]))
    return out


def _whitespace(rng: random.Random) -> List[str]:
    out = []
    for unit in WHITESPACE_UNITS:
        for count in (1, 2, 3, 4, 7, 16, 33):
            run = unit * count
            out += [run, run + "word", "word" + run, "a" + run + "b", run + "1", "." + run + ".",
                    run + "<b>" + run]
    for _ in range(150):
        run = "".join(rng.choice(WHITESPACE_UNITS) for _ in range(rng.randint(1, 12)))
        word = rng.choice(["hello", "x", "123", "ß", "你好", "😀", "-", "'s", ""])
        out.append(rng.choice([run + word, word + run, run + word + run, word + run + word]))
    return out


def _random_unicode(rng: random.Random, count: int) -> List[str]:
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2190, 0x23FF),
              (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xFE00, 0xFFFD),
              (0x10000, 0x1FFFF), (0x1F300, 0x1FAFF), (0x20000, 0x2FFFF), (0xE0000, 0xE01EF), (0xF0000, 0x10FFFF)]
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(1, 24)):
            lo, hi = rng.choice(ranges)
            cp = rng.randint(lo, hi)
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0xFFFD
            chars.append(chr(cp))
        out.append("".join(chars))
    return out


def build_corpus(special_texts: Sequence[str], seed: int = 20240601, n_random: int = 600, n_mixed: int = 500) -> List[str]:
    """At least ~2,000 distinct strings; special_texts are the model's own special-token strings."""
    rng = random.Random(seed)
    corpus: List[str] = []
    corpus += SENTENCES + CODE + EMOJI
    for text in SENTENCES + CODE + EMOJI:
        corpus += [" " + text, text + " ", "  " + text + "\n", "\n" + text + "\t", text.upper(), text.lower()]
    corpus += _numbers(rng)
    corpus += _whitespace(rng)
    for special in special_texts:
        corpus += [special, " " + special, special + " ", "a" + special + "b", special + special,
                   f"x {special}\ny", special[:-1], special + "\n" + special[1:]]
    corpus += _random_unicode(rng, n_random)
    pools = [SENTENCES, CODE, EMOJI, WHITESPACE_UNITS, list(special_texts) or [""]]
    for _ in range(n_mixed):
        parts = []
        for _ in range(rng.randint(2, 6)):
            pool = rng.choice(pools)
            piece = rng.choice(pool)
            if len(piece) > 12 and rng.random() < 0.5:
                start = rng.randrange(len(piece) - 4)
                piece = piece[start:start + rng.randint(2, 12)]
            parts.append(piece)
        corpus.append("".join(parts))
    corpus += ["", " ", "\n", "\x00", "a\x00b", "\ufeffBOM", "\ufffd", "\u200b\u200c\u200d", "a" * 300,
               "ab" * 200, " " * 100, "\n" * 50, "1" * 100]
    seen = set()
    unique = []
    for text in corpus:
        if text not in seen:
            seen.add(text)
            unique.append(text)
    return unique
