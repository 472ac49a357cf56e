"""Regenerate data/sample/: a tiny corpus in the exact RUSLAN layout and format.

    python scripts/make_sample_data.py            # needs espeak-ng (apt-get install espeak-ng)

RUSLAN ships 44.1 kHz mono 16-bit WAVs in <root>/RUSLAN/<id>.wav and a pipe-delimited
metadata_RUSLAN_22200.csv ("000000_RUSLAN|Text."). The sample copies that exactly, so every
code path a real corpus takes (the 44.1 kHz rate check, prepare's resampling, the ruslan
formatter) runs on it. The sentences are public-domain Russian literature (Pushkin, Lermontov,
Gogol, Tolstoy, Chekhov, Turgenev, Krylov; all died before 1925). The speech is espeak-ng's
Russian voice at 22.05 kHz, resampled once to RUSLAN's 44.1 kHz with soxr.

The WAVs are committed, so nothing needs espeak-ng at run time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RUSLAN_RATE = 44100

SENTENCES = [
    "Мороз и солнце; день чудесный!",
    "Я помню чудное мгновенье.",
    "Белеет парус одинокий в тумане моря голубом.",
    "Все счастливые семьи похожи друг на друга.",
    "Всё смешалось в доме Облонских.",
    "Чуден Днепр при тихой погоде.",
    "И какой же русский не любит быстрой езды?",
    "В человеке должно быть всё прекрасно.",
    "Краткость — сестра таланта.",
    "Человек есть то, во что он верит.",
    "Выхожу один я на дорогу.",
    "Ночь, улица, фонарь, аптека.",
    "Москва, как много в этом звуке!",
    "Не жалею, не зову, не плачу.",
    "Зима!.. Крестьянин, торжествуя, на дровнях обновляет путь.",
    "Глаза боятся, а руки делают.",
    "Тише едешь — дальше будешь.",
    "Вечерний звон, вечерний звон!",
    "Под голубыми небесами великолепными коврами лежит снег.",
    "Ворона где-то бог послал кусочек сыру.",
    "Лениво дышит полдень мглистый.",
    "Он был титулярный советник, она генеральская дочь.",
    "Тучки небесные, вечные странники!",
    "Счастливые часов не наблюдают.",
]


def synthesize(text: str, out_path: Path, tmp_dir: Path) -> float:
    """Speak `text` with espeak-ng, resample to 44.1 kHz, write 16-bit PCM; return seconds."""
    raw = tmp_dir / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "ru", "-s", "150", "-w", str(raw), text], check=True)
    audio, rate = sf.read(raw, dtype="float32")
    audio = soxr.resample(audio, rate, RUSLAN_RATE, quality="HQ")
    sf.write(out_path, np.clip(audio, -1.0, 1.0), RUSLAN_RATE, subtype="PCM_16")
    return len(audio) / RUSLAN_RATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "sample")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng")

    wav_dir = args.out / "RUSLAN"
    wav_dir.mkdir(parents=True, exist_ok=True)
    lines, total = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(SENTENCES):
            utt_id = f"{i:06d}_RUSLAN"
            total += synthesize(text, wav_dir / f"{utt_id}.wav", Path(tmp))
            lines.append(f"{utt_id}|{text}\n")
    (args.out / "metadata_RUSLAN_22200.csv").write_text("".join(lines), encoding="utf-8")
    print(f"wrote {len(lines)} utterances, {total:.1f} s of audio, to {args.out}")


if __name__ == "__main__":
    main()
