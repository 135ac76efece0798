"""The concept explorer's numbers: format fields and ranges from torch, encodings that decode
back to what torch stores, CONCEPTS.md's worked examples, and the live matrix quantization."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from ui.concepts import (
    BY_NAME,
    DEFAULT_MATRIX,
    FORMATS,
    bit_layout_figure,
    encode_all,
    encode_float,
    encode_int,
    encodings_frame,
    format_table,
    grid_figure,
    quantize_matrix,
)


def test_format_fields_and_ranges_match_concepts() -> None:
    t = format_table().set_index("format")
    fields = {n: tuple(t.loc[n, ["sign", "exponent", "fraction"]]) for n in t.index}
    assert fields["FP32"] == (1, 8, 23) and fields["FP16"] == (1, 5, 10)
    assert fields["BF16"] == (1, 8, 7)
    assert fields["FP8 E4M3"] == (1, 4, 3) and fields["FP8 E5M2"] == (1, 5, 2)
    assert t.loc["FP16", "max"] == 65504 and t.loc["FP8 E4M3", "max"] == 448
    assert t.loc["FP8 E5M2", "max"] == 57344 and t.loc["INT8", "max"] == 127
    assert t.loc["BF16", "max"] == pytest.approx(t.loc["FP32", "max"], rel=0.01)  # same range
    assert (
        round(t.loc["FP32", "decimal digits"]) == 7 and round(t.loc["FP16", "decimal digits"]) == 3
    )
    assert t.loc["FP16", "smallest subnormal"] == 2.0**-24


def test_fp32_bits_agree_with_struct() -> None:
    for v in (0.1, -3.2, 1.0, 6.02e23):
        e = encode_float(v, BY_NAME["FP32"])
        assert e.bits == format(struct.unpack(">I", struct.pack(">f", v))[0], "032b")
        assert e.stored == struct.unpack(">f", struct.pack(">f", v))[0]


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.is_float], ids=lambda f: f.name)
def test_float_bits_decode_to_the_stored_value(fmt) -> None:
    for v in (0.1, -3.2, 1.0, 300.0, 1e-3):
        e = encode_float(v, fmt)
        sign, exp, frac = (
            e.bits[0],
            e.bits[1 : 1 + fmt.exponent_bits],
            e.bits[1 + fmt.exponent_bits :],
        )
        assert len(frac) == fmt.fraction_bits
        # Decode the bits by the textbook formula and compare with torch's own cast.
        E, F = int(exp, 2), int(frac, 2)
        mant = (1 if E else 0) + F / 2**fmt.fraction_bits
        value = (-1) ** int(sign) * mant * 2.0 ** ((E or 1) - fmt.bias)
        assert value == e.stored == float(torch.tensor(v).to(fmt.dtype).float())
        assert e.error == pytest.approx(e.stored - v)


def test_range_limits_show_as_overflow_and_underflow() -> None:
    assert encode_float(70000.0, BY_NAME["FP16"]).status == "overflow: became infinity"
    assert encode_float(70000.0, BY_NAME["BF16"]).status.startswith("rounded")  # FP32's range
    assert "overflow" in encode_float(500.0, BY_NAME["FP8 E4M3"]).status
    assert encode_float(1e-9, BY_NAME["FP16"]).status == "underflow: became zero"
    assert encode_float(0.5, BY_NAME["FP8 E5M2"]).status == "exact"


def test_absmax_example_from_concepts() -> None:
    # max|X| = 3.2, a weight 0.1 -> round(0.1 x 127 / 3.2) = 4 -> 4 x 3.2 / 127 = 0.1008
    e = encode_int(0.1, BY_NAME["INT8"], 3.2)
    assert e.bits == "00000100" and e.stored == pytest.approx(0.1008, abs=5e-5)
    assert abs(e.error) == pytest.approx(0.0008, abs=5e-5)
    neg = encode_int(-3.2, BY_NAME["INT4"], 3.2)
    assert neg.bits == "1001"  # -7 in 4-bit two's complement
    assert encode_int(5.0, BY_NAME["INT8"], 3.2).status.startswith("clipped")
    with pytest.raises(ValueError):
        encode_all(float("nan"), 1.0)


def test_encodings_frame_and_bit_layout_figure() -> None:
    encs = encode_all(0.1, 3.2)
    df = encodings_frame(encs)
    assert df["format"].tolist() == [f.name for f in FORMATS]
    assert df.loc[0, "bits"] == "0 01111011 10011001100110011001101"  # sign exponent fraction
    fig = json.loads(bit_layout_figure(encs, 0.1).to_json())
    assert fig["layout"]["xaxis"]["title"]["text"] and fig["layout"]["yaxis"]["title"]["text"]
    assert fig["data"][0]["y"] == df["format"].tolist()
    assert "".join(fig["data"][0]["text"][1][:16]) == encs[1].bits  # FP16 row


def test_matrix_absmax_and_zero_point() -> None:
    mq = quantize_matrix(DEFAULT_MATRIX)
    assert mq.q[0, 0] == 4 and mq.q[0, 3] == 127 and mq.zero is None
    assert mq.bytes_before == 48 and mq.storage == {"integers": 12, "scales": 4, "zero points": 0}
    assert np.abs(mq.error).max() <= mq.scale[0] / 2 + 1e-7  # rounding error at most half a step
    zp = quantize_matrix(DEFAULT_MATRIX, symmetric=False)
    lo, hi = np.min(DEFAULT_MATRIX), np.max(DEFAULT_MATRIX)
    assert zp.scale[0] == pytest.approx((hi - lo) / 255)  # CONCEPTS: 255 / (max - min), inverted
    assert zp.zero[0] == -round(255 / (hi - lo) * lo) - 128
    assert zp.q.min() == -128 and zp.q.max() == 127  # the whole range is used
    # Skewed data: zero-point spends no levels on the unused negative side, so its step is finer.
    assert zp.scale[0] < mq.scale[0] and np.abs(zp.error).max() <= zp.scale[0] / 2 + 1e-7
    assert zp.bytes_after == 12 + 4 + 1
    assert quantize_matrix(DEFAULT_MATRIX, bits=4).storage["integers"] == 6


def test_an_outlier_crushes_the_rest_until_per_channel_or_clipping() -> None:
    clean = quantize_matrix(DEFAULT_MATRIX)
    x = np.array(DEFAULT_MATRIX)
    x[1, 2] = 40.0
    tensor = quantize_matrix(x)
    assert tensor.levels_used(exclude_largest=True) < clean.levels_used(exclude_largest=True)
    assert tensor.mean_abs_error(True) > 5 * clean.mean_abs_error(True)
    channel = quantize_matrix(x, per_channel=True)
    assert channel.scale.shape == (3,) and channel.storage["scales"] == 12
    assert channel.mean_abs_error(True) < tensor.mean_abs_error(True)
    assert channel.deq[0] == pytest.approx(quantize_matrix(x[:1]).deq[0])
    clipped = quantize_matrix(x, clip_percentile=90.0)
    assert clipped.mean_abs_error(True) < tensor.mean_abs_error(True)
    assert abs(clipped.error[1, 2]) > 30  # the price: the outlier itself is clipped


def test_matrix_input_is_checked_and_grid_figure_has_titles() -> None:
    with pytest.raises(ValueError):
        quantize_matrix([1.0, 2.0])
    with pytest.raises(ValueError):
        quantize_matrix([[1.0, float("nan")]])
    mq = quantize_matrix(DEFAULT_MATRIX, bits=4)
    fig = grid_figure(mq)
    assert fig.layout.xaxis.title.text == "Value" and fig.layout.yaxis.title.text
    assert {"levels", "original", "dequantized"} <= {t.name for t in fig.data}
    levels = np.asarray(fig.data[0].x)  # row 0's representable values
    assert np.allclose(np.diff(levels), mq.scale[0])
    assert all(np.isclose(levels, d).any() for d in mq.deq.reshape(-1))  # every value lands on one
