"""Defects a new user hits trying the README on the shipped examples (issue 21c).

Each test names the mistake a first-time user makes and checks the message einc gives for it:
one located error per mistake, no cascade of false ones, no traceback.
"""

from __future__ import annotations

from pathlib import Path

from einc.compiler.build import build_region_graph
from einc.grammar.parser import parse

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def build_messages(text: str) -> list[str]:
    graph, diagnostics = build_region_graph(parse(text, "t.pc"))
    assert graph is None and diagnostics
    return [d.message for d in diagnostics]


def test_a_bad_domain_is_one_error_not_a_cascade_through_named_regions() -> None:
    # examples/tiny.pc with a misspelt domain: its named regions (all, left, right) cannot be
    # built, and every partition naming them used to add a false "unknown variable 'all'".
    tiny = (EXAMPLES / "tiny.pc").read_text()
    for wrong in ("bool", "categorical(1)", "categorical(x)"):
        text = tiny.replace("var A, B, C, D : binary", f"var A, B, C, D : {wrong}")
        found = build_messages(text)
        assert len(found) == 1, found
        assert "unknown variable" not in found[0], found


def test_a_region_over_a_misspelt_variable_is_one_error() -> None:
    text = "var A, B : binary\nleaf A, B ~ bernoulli\nregion top = {A, Bee}\ntop -> A * B\n"
    found = build_messages(text)
    assert len(found) == 1 and "unknown" in found[0] and "'Bee'" in found[0], found


def test_torch_and_numpy_dtypes_and_devices_are_accepted_where_names_are(tmp_path: Path) -> None:
    # A PyTorch user writes dtype=torch.float64 and device=torch.device("cpu"); these raised
    # TypeError / AttributeError from deep inside the compiler (and einc.load alike).
    import einc
    import numpy as np
    import torch

    x = [[0, 1, 0, 1], [1, 1, 0, 0]]
    reference = einc.compile(EXAMPLES / "tiny.pc", dtype="float64", seed=3).log_likelihood(x)
    for dtype in (torch.float64, torch.double, np.float64, np.dtype("float64")):
        model = einc.compile(EXAMPLES / "tiny.pc", dtype=dtype, device=torch.device("cpu"), seed=3)
        assert model.dtype == "float64" and model.device == "cpu"
        np.testing.assert_array_equal(model.log_likelihood(x), reference)
    model.save(tmp_path / "m.npz")
    loaded = einc.load(tmp_path / "m.npz", dtype=torch.float32, device=torch.device("cpu"))
    assert loaded.dtype == "float32" and loaded.device == "cpu"


def test_an_unsupported_dtype_or_device_object_is_a_backend_error_naming_it(tmp_path: Path) -> None:
    import einc
    import pytest
    import torch

    for dtype in (torch.float16, "torch.float64", "double", int):
        with pytest.raises(einc.BackendError, match="unsupported dtype"):
            einc.compile(EXAMPLES / "tiny.pc", dtype=dtype)
    for device in (torch.device("meta"), 0, None):
        with pytest.raises(einc.BackendError, match="unknown device"):
            einc.compile(EXAMPLES / "tiny.pc", device=device)
    einc.compile(EXAMPLES / "tiny.pc").save(tmp_path / "m.npz")
    with pytest.raises(einc.BackendError, match="unsupported dtype"):
        einc.load(tmp_path / "m.npz", dtype=torch.int64)


def _apply_leaf_suggestions(text: str) -> str:
    """``text`` with every `leaf ...` line a "no leaf family" error suggests appended."""
    import re

    found = build_messages(text)
    lines = [re.search(r"add e\.g\. `(leaf [^`]*)`", m) for m in found]
    assert all(lines), found
    return text + "".join(f"{line.group(1)}\n" for line in lines if line)


def test_the_suggested_leaf_line_for_part_of_an_array_fixes_it_without_a_new_error() -> None:
    # `leaf x ~ categorical` was suggested for x[4..9] while x[0:4] already had a family, so
    # following the advice gave "x[0] .. already have a leaf family".
    body = "structure random_binary_trees(depth = 2, replicas = 2)\n"
    cases = [
        "var A, B : binary\nvar x[10] : categorical(5)\nvar n : count\nleaf A ~ bernoulli\nleaf x[0:4] ~ categorical\n",
        "var x[10] : binary\nleaf x[0:9] ~ bernoulli\n",  # one left: x[9]
        "var img[4, 4] : binary\nleaf img[0:2, :] ~ bernoulli\n",  # the bottom half of a grid
        "var img[4, 4] : binary\nleaf img[:, 0:3] ~ bernoulli\n",  # the last column
        "var x[6] : binary\nleaf x[1:5] ~ bernoulli\n",  # x[0] and x[5]: no one slice names both
    ]
    for case in cases:
        fixed = _apply_leaf_suggestions(case + body)
        graph, diagnostics = build_region_graph(parse(fixed, "t.pc"))
        assert diagnostics == [] and graph is not None, (fixed, [d.message for d in diagnostics])


def test_every_project_file_the_readme_names_exists() -> None:
    # The README pointed at examples/hclt_patches.pc and einc/datasets.py, which are
    # examples/lvd/mnist_hclt_patches.pc and einc/io/datasets.py.
    import re

    root = EXAMPLES.parent
    readme = (root / "README.md").read_text()
    named = set(re.findall(r"`((?:examples|benchmarks|tests|backends|compiler|einc|ir|grammar|docs)/"
                           r"[\w./-]+\.(?:pc|py|lark|sh|md|npz|csv|csv\.gz|png))`", readme))
    assert len(named) > 20  # the pattern finds the README's references
    missing = sorted(path for path in named if not (root / path).exists())
    assert missing == [], missing


def test_a_file_with_another_separator_is_named_as_such(tmp_path: Path) -> None:
    # np.savetxt writes spaces by default; such a file was "the header line does not match the
    # circuit's columns ... found 1.000000000000000000e+00 1.... (1 columns)", or with the columns
    # unknown its first row was taken as a header and the second "is not a number".
    import numpy as np
    import pytest
    from einc.data import read_data
    from einc.errors import DataError

    x = np.random.default_rng(0).integers(0, 2, (5, 4))
    for separator, word in ((" ", "spaces"), ("\t", "tabs"), (";", "semicolons")):
        path = tmp_path / "train.csv"
        np.savetxt(path, x, delimiter=separator)
        for columns in (["A", "B", "C", "D"], None):
            with pytest.raises(DataError, match=f"train.csv:1: .*separated by {word}, not commas"):
                read_data(path, columns=columns)
        with_header = tmp_path / "header.csv"
        with_header.write_text("A,B,C,D\n" + path.read_text())
        with pytest.raises(DataError, match=f"header.csv:2: .*separated by {word}, not commas"):
            read_data(with_header, columns=["A", "B", "C", "D"])
    np.savetxt(path, x, delimiter=",")  # what the message advises reads
    np.testing.assert_array_equal(read_data(path, columns=["A", "B", "C", "D"]).values, x)


def test_no_root_names_the_regions_that_exist_when_every_region_is_in_a_cycle() -> None:
    # `A -> A * B`: {A} is its own parent, so there is no top region; the message said
    # "no region contains A, B (top regions: )" though the regions {A} and {B} exist.
    import einc
    import pytest

    with pytest.raises(einc.EincError) as raised:
        einc.compile("var A, B : binary\nleaf A, B ~ bernoulli\nA -> A * B\n")
    text = str(raised.value)
    assert "no root" in text and "(top regions: )" not in text, text
    assert "no region contains" not in text, text


def test_an_unknown_option_points_at_the_command_s_help_with_a_suggestion(capsys) -> None:
    # `einc check FILE --emit plan` said "(see einc --help)", whose page does not list the
    # command's options; a misspelt option got no suggestion.
    from einc.cli import main

    tiny = str(EXAMPLES / "tiny.pc")
    assert main(["check", tiny, "--emit", "plan"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("einc: error: unrecognized arguments: --emit plan") and "(see einc check --help)" in error
    assert error.count("\n") == 1
    assert main(["train", tiny, "--data", "x.csv", "--epcohs", "2", "-o", "m.npz"]) == 1
    error = capsys.readouterr().err
    assert "--epcohs" in error and "did you mean --epochs?" in error and "(see einc train --help)" in error
    assert main(["eval", "m.npz", "--data", "x.csv", "--stream"]) == 1  # eval reads no stream: no guess
    error = capsys.readouterr().err
    assert "unrecognized arguments: --stream" in error and "did you mean" not in error


def test_the_cli_says_which_head_of_a_multi_head_model_it_answers_with_and_takes_another(tmp_path: Path, capsys) -> None:
    # `einc eval`, `sample`, `query` and `inpaint` used head 0 of a class-conditional model
    # without saying so, and no option chose another head.
    import einc
    import numpy as np
    from einc.cli import main

    rng = np.random.default_rng(0)
    x, labels = rng.integers(0, 2, (200, 4)), rng.integers(0, 2, 200)
    model = einc.compile(EXAMPLES / "tiny.pc", options=einc.CompileOptions(heads=2), dtype="float64", seed=0)
    model.fit(x, labels=labels, epochs=1)
    path, data = tmp_path / "mh.npz", tmp_path / "x.npy"
    model.save(path)
    np.save(data, x[:20])
    ll = model.log_likelihood(x[:20])

    assert main(["eval", str(path), "--data", str(data), "--head", "1"]) == 0
    out = capsys.readouterr().out
    assert "head 1 of 2" in out and f"mean LL {ll[:, 1].mean():.4f}" in out
    assert main(["eval", str(path), "--data", str(data)]) == 0
    assert "head 0 of 2" in capsys.readouterr().out

    samples = tmp_path / "s.npy"
    assert main(["sample", str(path), "-n", "50", "--head", "1", "--seed", "3", "-o", str(samples)]) == 0
    assert "head 1 of 2" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(samples), model.sample(50, head=1, seed=3))

    assert main(["query", str(path), "--evidence", "A=1", "--target", "B", "--head", "1"]) == 0
    out = capsys.readouterr().out
    joint = model.log_likelihood([[1, 0, np.nan, np.nan], [1, 1, np.nan, np.nan]])[:, 1]
    assert "head 1 of 2" in out and f"1: {np.exp(joint[1] - np.logaddexp(*joint)):.6f}" in out

    assert main(["sample", str(path), "-n", "5", "--head", "2", "-o", str(samples)]) == 1
    error = capsys.readouterr().err
    assert "--head 2" in error and "0..1" in error
    assert main(["eval", str(path), "--data", str(data), "--head", "1", "--labels", str(data)]) == 1
    assert "--head" in capsys.readouterr().err


def test_a_pc_file_saved_with_a_byte_order_mark_reads_like_one_without(tmp_path: Path) -> None:
    # Windows editors save UTF-8 with a BOM; the parser reported an invisible "unexpected
    # character" at 1:1. Data files already had their BOM dropped.
    import einc

    text = (EXAMPLES / "tiny.pc").read_text()
    path = tmp_path / "bom.pc"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    model = einc.compile(path, seed=0)
    assert model.columns == einc.compile(EXAMPLES / "tiny.pc", seed=0).columns
    path.write_bytes(b"\xef\xbb\xbf" + b"var A, B : bool\n" + text.encode())  # columns count after the BOM
    import pytest

    with pytest.raises(einc.EincError, match=r"bom.pc:1:12: error: unknown domain 'bool'"):
        einc.compile(path)


def test_a_model_or_data_file_given_for_the_pc_file_is_named_for_what_it_is(tmp_path: Path, capsys) -> None:
    # `einc check model.npz` (or data) said "cannot read model.npz: 'utf-8' codec can't decode
    # byte 0xad in position 14: invalid start byte".
    import gzip

    import einc
    import numpy as np
    from einc.cli import main

    model = tmp_path / "model.npz"
    einc.compile(EXAMPLES / "tiny.pc").save(model)
    array = tmp_path / "x.npy"
    np.save(array, np.zeros((2, 4)))
    packed = tmp_path / "x.csv.gz"
    packed.write_bytes(gzip.compress(b"0,1,0,1\n"))
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x00\xff\xfe\x01")
    for path, what in ((model, "an .npz archive"), (array, "a .npy array"), (packed, "gzip-compressed"),
                       (binary, "not UTF-8 text")):
        for command in (["check", str(path)], ["train", str(path), "--data", str(array), "-o", str(tmp_path / "m.npz")]):
            assert main(command) == 1
            error = capsys.readouterr().err
            assert error.startswith(f"einc: error: {path}: not a .pc circuit file ({what}") and error.count("\n") == 1, error
            assert "codec" not in error


def test_a_model_file_given_as_data_is_named_for_what_it_is(tmp_path: Path, capsys) -> None:
    # `einc eval m.npz --data m.npz` (or train --data m.npz) read the model's first parameter
    # array as data: "expected 4 columns (...), found shape (4, 3)".
    import einc
    import pytest
    from einc.cli import main
    from einc.data import read_data
    from einc.errors import DataError

    model = tmp_path / "m.npz"
    einc.compile(EXAMPLES / "tiny.pc").save(model)
    with pytest.raises(DataError, match="m.npz: an einc model file, not data"):
        read_data(model)
    assert main(["eval", str(model), "--data", str(model)]) == 1
    assert "an einc model file, not data" in capsys.readouterr().err
    out = str(tmp_path / "out.npz")  # the out-of-core reader too
    assert main(["train", str(EXAMPLES / "tiny.pc"), "--data", str(model), "--stream", "--cache-dir", str(tmp_path), "-o", out]) == 1
    assert "an einc model file, not data" in capsys.readouterr().err


def test_one_hot_labels_get_a_message_about_their_shape_not_a_count(tmp_path: Path) -> None:
    # One-hot labels (N, heads), as a PyTorch user keeps them, were flattened: "600 labels for 300
    # samples; expected one label per sample".
    import einc
    import numpy as np
    import pytest
    from einc.errors import DataError
    from einc.io.data import prepare_labels

    y = np.random.default_rng(0).integers(0, 3, 30)
    with pytest.raises(DataError, match=r"labels: the labels have shape \(30, 3\); expected one integer label per row.*argmax"):
        prepare_labels(np.eye(3)[y], 30, 3)
    for fine in (y, y[:, None], y[None, :], list(y)):
        np.testing.assert_array_equal(prepare_labels(fine, 30, 3), y)
    model = einc.compile(EXAMPLES / "tiny.pc", options=einc.CompileOptions(heads=3))
    with pytest.raises(DataError, match=r"shape \(30, 3\)"):
        model.fit(np.zeros((30, 4)), labels=np.eye(3)[y], epochs=1)


def test_a_csv_with_an_index_column_as_pandas_writes_it_is_named_as_such(tmp_path: Path) -> None:
    # df.to_csv(path) writes ",A,B,C,D" and an index column: the empty first cell made the header
    # a data row ("idx.csv:1:2: 'A' is not a number"), and with the columns unknown the index was
    # read as a variable.
    import numpy as np
    import pytest
    from einc.data import read_data
    from einc.errors import DataError

    path = tmp_path / "idx.csv"
    path.write_text(",A,B,C,D\n0,0,1,0,1\n1,1,1,0,0\n")
    for columns in (["A", "B", "C", "D"], None):
        with pytest.raises(DataError, match=r"idx.csv:1: .*index column.*index=False"):
            read_data(path, columns=columns)
    path.write_text("Unnamed: 0,A,B,C,D\n0,0,1,0,1\n")
    with pytest.raises(DataError, match=r"index column"):
        read_data(path, columns=["A", "B", "C", "D"])
    # rows of missing values and headers of names still read as before
    path.write_text("?,,nan,NA\n0,1,0,1\n")
    assert np.isnan(read_data(path, columns=["A", "B", "C", "D"]).values[0]).all()
    path.write_text("A,B,C,D\n0,1,,1\n")
    assert read_data(path, columns=["A", "B", "C", "D"]).values.shape == (1, 4)
    path.write_text(",B,C,D\n0,1,0,1\n")  # a name left out is a header that does not match
    with pytest.raises(DataError, match=r"header line does not match"):
        read_data(path, columns=["A", "B", "C", "D"])


def test_syntax_hints_fit_where_the_slip_is() -> None:
    # `random_binary_trees(depth: 1, ...)` was told "a region is named with '=', e.g. region
    # all = {A, B}"; `VAR A : binary` got no suggestion (only lower-case slips did).
    import einc
    import pytest

    head = "var A, B : binary\nleaf A, B ~ bernoulli\n"
    cases = {
        "structure random_binary_trees(depth: 1, replicas = 1)\n": "an argument is given with '=', e.g. depth = 2",
        "structure random_binary_trees(depth = 1, replicas = 1)\nsums {A, B}: 3\n": "e.g. sums {A, B} = 12",
        "structure random_binary_trees(depth = 1, replicas = 1)\nregion all: {A, B}\n": "e.g. region all = {A, B}",
        "structure random_binary_trees(depth = 1, replicas = 1)\nlatent z: {A, B}\n": "e.g. latent z = {A, B}",
    }
    for tail, hint in cases.items():
        with pytest.raises(einc.EincError) as raised:
            einc.compile(head + tail)
        assert hint in str(raised.value) and str(raised.value).count("e.g.") == 1, str(raised.value)
    with pytest.raises(einc.EincError, match="did you mean 'var'"):
        einc.compile("VAR A, B : binary\nleaf A, B ~ bernoulli\n{A, B} -> A * B\n")
    with pytest.raises(einc.EincError, match="did you mean binary"):
        einc.compile("var A, B : BINARY\nleaf A, B ~ bernoulli\n{A, B} -> A * B\n")


def test_a_value_too_large_for_float64_is_not_told_to_use_float64() -> None:
    import einc
    import numpy as np
    import pytest

    text = "var r, s : real\nleaf r, s ~ normal\n{r, s} -> r * s\n"
    for dtype, remedy in (("float32", "rescale the data or use float64"), ("float64", "rescale the data")):
        model = einc.compile(text, dtype=dtype)
        with pytest.raises(einc.DataError, match=f"too large for a normal leaf in {dtype}") as raised:
            model.log_likelihood(np.array([[1e200, 0.0]]))
        assert str(raised.value).endswith(remedy), str(raised.value)


def test_learn_structure_on_non_binary_data_points_at_variables_and_the_file_line(tmp_path: Path, capsys) -> None:
    # Without --variables every column is binary: MNIST pixels gave "small.npz:x_test: row 1,
    # column 203 (variable x[202]): value 84 is outside the domain; expected 0 or 1" with no word
    # of --variables, and a CSV's error was placed by array row, not file line.
    from einc.cli import main

    data = tmp_path / "counts.csv"
    data.write_text("a,b,c\n0,1,0\n1,4,0\n")
    assert main(["learn-structure", "hclt", "--data", str(data), "-o", str(tmp_path / "t.pc")]) == 1
    error = capsys.readouterr().err
    assert f"{data}:3:2 (variable x[1]): value 4 is outside the domain" in error, error
    assert "--variables" in error and error.count("\n") == 1, error
    spec = tmp_path / "spec.pc"
    spec.write_text("var a, b, c : count\nleaf a, b, c ~ poisson\n")
    assert main(["learn-structure", "hclt", "--data", str(data), "--variables", str(spec), "--sums", "2",
                 "-o", str(tmp_path / "t.pc")]) == 0


def test_bench_checks_its_json_output_before_the_work(tmp_path: Path, capsys) -> None:
    # `einc bench ... --json /missing/b.json` ran every backend, printed the table, then failed
    # with "No such file or directory": the measurements were lost.
    from einc.cli import main

    tiny = str(EXAMPLES / "tiny.pc")
    quick = ["bench", tiny, "--backends", "numpy", "--samples", "20", "--repeats", "1"]
    missing = tmp_path / "missing" / "b.json"
    assert main([*quick, "--json", str(missing)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "does not exist" in captured.err
    assert main([*quick, "--json", tiny]) == 1
    assert "FILE.pc" in capsys.readouterr().err
    records = tmp_path / "b.json"
    assert main([*quick, "--json", str(records)]) == 0 and main([*quick, "--json", str(records)]) == 0
    assert len(records.read_text().splitlines()) == 2  # appended, one line per backend and run


def test_class_conditional_training_with_validation_needs_the_validation_labels(tmp_path: Path, capsys) -> None:
    # fit(x, labels=y, valid=v) without valid_labels scored every validation row under head 0, so
    # the best epoch and patience followed one class's likelihood of all rows, silently; and
    # fit(valid_labels=...) without valid ignored them.
    import einc
    import numpy as np
    import pytest
    from einc.cli import main

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 2, (40, 4)), rng.integers(0, 2, 40)
    model = einc.compile(EXAMPLES / "tiny.pc", options=einc.CompileOptions(heads=2))
    with pytest.raises(einc.EincError, match="valid_labels"):
        model.fit(x, labels=y, valid=x, epochs=1)
    with pytest.raises(einc.EincError, match="give valid too"):
        model.fit(x, labels=y, valid_labels=y, epochs=1)
    assert len(model.fit(x, labels=y, valid=x, valid_labels=y, epochs=1)) == 1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["train", str(EXAMPLES / "tiny.pc"), "--heads", "2", "--data", str(tmp_path / "x.npy"), "--labels",
            str(tmp_path / "y.npy"), "--valid", str(tmp_path / "x.npy"), "--epochs", "1", "-o", str(tmp_path / "m.npz")]
    assert main(args) == 1
    assert "--valid-labels" in capsys.readouterr().err and not (tmp_path / "m.npz").exists()
    assert main([*args, "--valid-labels", str(tmp_path / "y.npy")]) == 0


def test_lvd_refuses_growing_options_without_grow_and_reassign_with_it(tmp_path: Path, capsys) -> None:
    # `einc lvd ... --grown-pc g.pc` (or --grow-threshold) without --grow, and --reassign with
    # --grow, were silently ignored.
    import numpy as np
    from einc.cli import main

    circuit = tmp_path / "lat.pc"
    circuit.write_text("var A, B, C, D : binary\nleaf A, B, C, D ~ bernoulli\nsums 3\n"
                       "{A, B, C, D} -> {A, B} * {C, D}\n{A, B} -> A * B\n{C, D} -> C * D\n"
                       "latent z1 = {A, B}\nlatent z2 = {C, D}\n")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 2, (30, 4)))
    np.save(tmp_path / "f.npy", rng.normal(size=(30, 2, 3)))
    base = ["lvd", str(circuit), "--data", str(tmp_path / "x.npy"), "--teacher", str(tmp_path / "f.npy"),
            "--epochs", "1", "--finetune-epochs", "0", "-o", str(tmp_path / "m.npz")]
    for extra, named in ((["--grown-pc", str(tmp_path / "g.pc")], "--grown-pc"),
                         (["--grow-threshold", "0.2"], "--grow-threshold"),
                         (["--grow", "2x2", "--reassign", "1"], "--reassign")):
        assert main([*base, *extra]) == 1
        error = capsys.readouterr().err
        assert named in error and error.count("\n") == 1, error
    assert not (tmp_path / "m.npz").exists()
    assert main(base) == 0


def test_training_options_the_chosen_method_ignores_are_refused(tmp_path: Path, capsys) -> None:
    # fit(x, learning_rate=0.1) trains by EM, which has no learning rate; fit(method="adam",
    # step_size=0.5) or pseudocount= or update="epoch" are EM's; samples= is for vae leaves. All
    # were accepted and ignored (einc train --learning-rate 0.1 alike).
    import einc
    import numpy as np
    import pytest
    from einc.cli import main

    x = np.random.default_rng(0).integers(0, 2, (30, 4))
    model = einc.compile(EXAMPLES / "tiny.pc")
    for options, named in ((dict(learning_rate=0.1), "learning_rate"),
                           (dict(method="adam", step_size=0.5), "step_size"),
                           (dict(method="adam", pseudocount=1.0), "pseudocount"),
                           (dict(method="adam", update="epoch"), "update"),
                           (dict(samples=3), "samples")):
        with pytest.raises(einc.EincError, match=named):
            model.fit(x, epochs=1, **options)
    assert model.training is None  # nothing ran
    # the defaults, given explicitly, are fine
    model.fit(x, epochs=1, method="adam", step_size=0.05, learning_rate=0.02)
    model.fit(x, epochs=1, learning_rate=0.01, step_size=0.5, pseudocount=0.1, update="epoch")
    np.save(tmp_path / "x.npy", x)
    args = ["train", str(EXAMPLES / "tiny.pc"), "--data", str(tmp_path / "x.npy"), "--epochs", "1",
            "-o", str(tmp_path / "m.npz")]
    assert main([*args, "--learning-rate", "0.1"]) == 1
    assert "--learning-rate" in capsys.readouterr().err and not (tmp_path / "m.npz").exists()


def test_labels_for_a_circuit_with_too_few_heads_say_how_to_give_it_more() -> None:
    import einc
    import numpy as np
    import pytest

    model = einc.compile(EXAMPLES / "tiny.pc")  # heads 1
    with pytest.raises(einc.DataError, match=r"`heads 3` in the .pc file or --heads 3"):
        model.fit(np.zeros((6, 4)), labels=[0, 1, 2, 0, 1, 2], epochs=1)
    with pytest.raises(einc.DataError) as raised:  # not a count of classes: no such advice
        model.fit(np.zeros((2, 4)), labels=[0, -1], epochs=1)
    assert "heads" not in str(raised.value).split("(the circuit has")[1][10:]


def test_a_key_on_a_file_that_is_not_an_npz_is_named_not_called_missing(tmp_path: Path) -> None:
    # `--data x.npy:a` said "x.npy:a: no such data file" though x.npy is there.
    import numpy as np
    import pytest
    from einc.data import read_data
    from einc.errors import DataError

    np.save(tmp_path / "x.npy", np.zeros((2, 4)))
    (tmp_path / "x.csv").write_text("0,1\n")
    with pytest.raises(DataError, match=r"x.npy: a .npy file holds one array; ':a' names an .npz member"):
        read_data(f"{tmp_path / 'x.npy'}:a")
    with pytest.raises(DataError, match=r"x.csv: not an .npz archive, so ':b' cannot name an array in it"):
        read_data(f"{tmp_path / 'x.csv'}:b")
    with pytest.raises(DataError, match=r"nothere.npy:a: no such data file"):
        read_data(f"{tmp_path / 'nothere.npy'}:a")


def test_resuming_without_the_k_overrides_the_model_was_trained_with_names_them(tmp_path: Path, capsys) -> None:
    # A model trained with --heads 2 resumed without it was "trained from another circuit than
    # examples/tiny.pc", which is the very file it was trained from.
    import numpy as np
    from einc.cli import main

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 2, (20, 4)))
    np.save(tmp_path / "y.npy", rng.integers(0, 2, 20))
    model = str(tmp_path / "m.npz")
    base = ["train", str(EXAMPLES / "tiny.pc"), "--data", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    assert main([*base, "--heads", "2", "--sums", "2", "--epochs", "1", "-o", model]) == 0
    capsys.readouterr()
    assert main([*base, "--heads", "2", "--epochs", "2", "--resume", model, "-o", model]) == 1
    error = capsys.readouterr().err
    assert "trained with --sums 2 --heads 2" in error and "another circuit" not in error, error
    assert main([*base, "--heads", "2", "--sums", "2", "--epochs", "2", "--resume", model, "-o", model]) == 0


def test_compile_options_of_the_wrong_type_are_named_not_a_type_error_deep_inside() -> None:
    # options={"sums": 4} or CompileOptions(sums=4.0) (a float from a sweep) raised TypeErrors
    # from dataclasses.replace or the size estimate.
    import einc
    import numpy as np
    import pytest

    for make, named in ((lambda: einc.CompileOptions(sums=4.0), "sums"),
                        (lambda: einc.CompileOptions(heads="2"), "heads"),
                        (lambda: einc.CompileOptions(max_bytes="4G"), "max_bytes"),
                        (lambda: einc.CompileOptions(max_build_seconds=0), "max_build_seconds"),
                        (lambda: einc.compile(EXAMPLES / "tiny.pc", options={"sums": 4}), "CompileOptions")):
        with pytest.raises(einc.EincError, match=named):
            make()
    model = einc.compile(EXAMPLES / "tiny.pc", options=einc.CompileOptions(sums=np.int64(2), max_bytes=2**30))
    assert model.num_parameters < einc.compile(EXAMPLES / "tiny.pc").num_parameters


def test_numpy_integer_k_overrides_save_and_load(tmp_path: Path) -> None:
    # CompileOptions(sums=np.int64(2)) (a K from np.arange in a sweep) compiled and trained, then
    # model.save failed: "Object of type int64 is not JSON serializable".
    import einc
    import numpy as np

    options = einc.CompileOptions(sums=np.int64(2), heads=np.int32(2), max_bytes=np.int64(2**30))
    model = einc.compile(EXAMPLES / "tiny.pc", options=options, seed=np.int64(3))  # the seed alike
    model.save(tmp_path / "m.npz")
    loaded = einc.load(tmp_path / "m.npz")
    assert loaded.overrides == {"sums": 2, "heads": 2} and loaded.seed == 3
    x = np.random.default_rng(0).integers(0, 2, (20, 4))
    einc.fit_mixture(EXAMPLES / "tiny.pc", x, components=np.int64(2), epochs=1, seed=np.int64(1)).save(tmp_path / "x.npz")


def test_load_names_options_of_the_wrong_type(tmp_path: Path) -> None:
    import einc
    import pytest

    einc.compile(EXAMPLES / "tiny.pc").save(tmp_path / "m.npz")
    with pytest.raises(einc.EincError, match="CompileOptions"):
        einc.load(tmp_path / "m.npz", options={"sums": 4})


def test_numpy_float32_hyperparameters_are_numbers() -> None:
    # fit(step_size=np.float32(0.1)) said "step_size must be in (0, 1], found np.float32(0.1)".
    import einc
    import numpy as np
    import pytest

    x = np.random.default_rng(0).integers(0, 2, (20, 4))
    model = einc.compile(EXAMPLES / "tiny.pc")
    model.fit(x, epochs=1, step_size=np.float32(0.1), pseudocount=np.float32(0.1))
    model.fit(x, epochs=1, method="adam", learning_rate=np.float32(0.02))
    for bad in (dict(step_size=np.float32(2.0)), dict(step_size=True), dict(pseudocount=np.float32(np.nan))):
        with pytest.raises(einc.EincError):
            model.fit(x, epochs=1, **bad)


def test_query_takes_repeated_target_and_evidence_options(tmp_path: Path, capsys) -> None:
    # `--target A --target B` answered only B, and a second --evidence replaced the first:
    # argparse keeps the last value of a repeated option.
    import einc
    from einc.cli import main

    model = tmp_path / "m.npz"
    einc.compile(EXAMPLES / "tiny.pc", seed=1).save(model)
    assert main(["query", str(model), "--evidence", "A=1,B=0", "--target", "C,D"]) == 0
    together = capsys.readouterr().out
    assert main(["query", str(model), "--evidence", "A=1", "--evidence", "B=0", "--target", "C", "--target", "D"]) == 0
    assert capsys.readouterr().out == together
    assert "P(C | A=1, B=0)" in together and "P(D | A=1, B=0)" in together
    assert main(["query", str(model), "--evidence", "A=1", "--evidence", "A=0", "--target", "C"]) == 1
    assert "gives A twice" in capsys.readouterr().err


def test_set_parameters_refuses_a_name_that_is_not_a_parameter() -> None:
    # an extra (e.g. misspelt) key was dropped without a word
    import einc
    import pytest

    model = einc.compile(EXAMPLES / "tiny.pc")
    params = model.parameters()
    with pytest.raises(einc.EincError, match="'einsum1.weight' is not a parameter of this model"):
        model.set_parameters({**params, "einsum1.weight": params["einsum1.weights"]})
    model.set_parameters(params)


def test_counts_read_in_the_right_number() -> None:
    """'after 1 epoch', not 'after 1 epochs': the messages that count epochs use counted()."""
    import numpy as np

    import einc
    from einc.progress import counted

    assert [counted(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    model = einc.compile(EXAMPLES / "tiny.pc", dtype="float64", seed=0)
    messages: list[str] = []
    # trained towards all ones, validated on all zeros: no epoch after the first is better
    model.fit(np.ones((64, 4)), valid=np.zeros((16, 4)), epochs=5, update="epoch", step_size=0.5, pseudocount=0,
              patience=1, on_message=messages.append)
    assert any("no better valid LL for 1 epoch (patience 1)" in m for m in messages), messages
