"""Markdown tables of the experiments and searches."""

from dstray.report.tables import markdown_table


def test_markdown_table_formats_floats_and_keeps_column_order():
    text = markdown_table([{"b": 0.123456, "a": "x"}, {"a": 2}], ["a", "b"])
    assert text == "| a | b |\n|---|---|\n| x | 0.1235 |\n| 2 |  |\n"
    assert markdown_table([{"f1": 0.5}], ["f1"], "{:.4f}".format).splitlines()[-1] == "| 0.5000 |"
