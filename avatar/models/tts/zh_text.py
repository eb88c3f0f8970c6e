"""Chinese text made speakable before synthesis: numbers, dates, times, money, percentages.

A voice that meets "2024年3月5日" reads digit strings its own way (espeak-ng says 二千二十四年: wrong twice,
a year is read digit by digit and 2000 is 两千). The caption keeps the digits; only the voice's input is
rewritten. Rules follow ordinary Mandarin reading (现代汉语数字读法):
- years and long digit strings (phone numbers, codes) are read digit by digit, 0 as 零 (一 as 幺 is left out);
- integers place by place with 零 for a gap, 两 before 千/万/亿 and 百 when it leads, 十 not 一十 at the start;
- decimals with 点 and the fractional digits one by one; 50% -> 百分之五十; negative numbers with 负;
- 3:05 -> 三点零五分, 3点 -> 三点, 2个 -> 两个 (a counted 2 is 两, 第2 stays 第二), 3-5天 -> 三到五天.
"""

from __future__ import annotations

import re

DIGITS = "零一二三四五六七八九"
_SMALL_UNITS = ("", "十", "百", "千")
_BIG_UNITS = ("", "万", "亿", "万亿")
# Measure words after which a lone 2 is read 两 (两个人, 两点, 两块) rather than 二.
_COUNTED = "个位只本件条张块次天年岁点名台部辆家种杯碗斤公里米分秒周"


def digits(text: str) -> str:
    """Digit by digit: 2024 -> 二零二四."""
    return "".join(DIGITS[int(c)] for c in text if c.isdigit())


def _group(n: int, leading: bool) -> str:
    """0 < n < 10000 read with 十/百/千; ``leading``: nothing is read before it."""
    out, zero = [], False
    for i in range(3, -1, -1):
        d = n // 10**i % 10
        if d == 0:
            zero = bool(out)
            continue
        if zero:
            out.append("零")
            zero = False
        if d == 2 and i >= 2 and not out and leading:
            out.append("两")
        elif d == 1 and i == 1 and not out and leading:
            pass  # 十二, not 一十二
        else:
            out.append(DIGITS[d])
        out.append(_SMALL_UNITS[i])
    return "".join(out)


def integer(n: int) -> str:
    """12 -> 十二, 205 -> 两百零五, 20000 -> 两万, 100010 -> 十万零一十."""
    if n < 0:
        return "负" + integer(-n)
    if n == 0:
        return "零"
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    out, gap = [], False
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g == 0:
            gap = bool(out)
            continue
        if out and (gap or g < 1000):
            out.append("零")
        out.append(_group(g, leading=not out))
        out.append(_BIG_UNITS[i] if i < len(_BIG_UNITS) else "")
        gap = False
    text = "".join(out)
    return "两" + text[1:] if text.startswith("二") and len(text) > 1 and text[1] in "万亿" else text


def number(text: str) -> str:
    """A decimal string: 12.5 -> 十二点五, 0.05 -> 零点零五, 1,200 -> 一千两百."""
    text = text.replace(",", "")
    whole, _, frac = text.partition(".")
    head = integer(int(whole)) if whole else "零"
    return head + ("点" + digits(frac) if frac else "")


_DATE = re.compile(r"(\d{2,4})年(?:(\d{1,2})月(?:(\d{1,2})[日号])?)?")
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)")
_RANGE = re.compile(r"(?<=\d)\s*[-~～–—]\s*(?=\d)")  # 3-5天 -> 三到五天
_MONTH_DAY = re.compile(r"(\d{1,2})月(\d{1,2})[日号]")
_CLOCK = re.compile(r"(\d{1,2})[:：](\d{2})")
_PERCENT = re.compile(r"(-?\d+(?:\.\d+)?)\s*[%％]")
# Phone numbers, codes and numbers with a leading zero are read digit by digit; amounts stop at 8 digits.
_LONG_DIGITS = re.compile(r"(?<![\d.,])(?:0\d+|\d{9,})(?![\d.,])")
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d+(?:,\d{3})*(?:\.\d+)?")  # "3-5天" is no minus


def _date(m: re.Match) -> str:
    out = digits(m.group(1)) + "年"
    if m.group(2):
        out += integer(int(m.group(2))) + "月"
    if m.group(3):
        out += integer(int(m.group(3))) + "日"
    return out


def _clock(m: re.Match) -> str:
    hour, minute = int(m.group(1)), int(m.group(2))
    head = "两" if hour == 2 else integer(hour)
    if minute == 0:
        return head + "点"
    return head + "点" + ("零" if minute < 10 else "") + integer(minute) + "分"


def _plain(m: re.Match) -> str:
    text = m.group(0)
    after = m.string[m.end():m.end() + 1]
    before = m.string[m.start() - 1:m.start()] if m.start() else ""
    if text == "2" and after and after in _COUNTED and before != "第":  # 第二名 is an ordinal
        return "两"
    return number(text)


def normalize(text: str) -> str:
    """Chinese text with every number written as it is read aloud. Text without digits is unchanged."""
    if not any(c.isdigit() for c in text):
        return text
    text = _ISO_DATE.sub(r"\1年\2月\3日", text)
    text = _DATE.sub(_date, text)
    text = _MONTH_DAY.sub(lambda m: integer(int(m.group(1))) + "月" + integer(int(m.group(2))) + "日", text)
    text = _CLOCK.sub(_clock, text)
    text = _PERCENT.sub(lambda m: ("负" if m.group(1).startswith("-") else "") + "百分之" + number(m.group(1).lstrip("-")),
                        text)
    text = _LONG_DIGITS.sub(lambda m: digits(m.group(0)), text)
    text = _RANGE.sub("到", text)
    return _NUMBER.sub(_plain, text)
