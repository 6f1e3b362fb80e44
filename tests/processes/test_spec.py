"""The sampling-spec grammar shared by every process."""

import pytest

from ardiff.processes.spec import SampleSpec, check_spec, parse_spec


@pytest.mark.parametrize("text,name,steps,options", [
    ("ddpm:1000", "ddpm", 1000, {}),
    ("ddim:50:eta=0.5", "ddim", 50, {"eta": 0.5}),
    ("ddpm:1000:noise=0", "ddpm", 1000, {"noise": 0}),
    ("ddim:10:eta=1:foo=x", "ddim", 10, {"eta": 1, "foo": "x"}),
    ("ddim:10:eta=1,foo=2", "ddim", 10, {"eta": 1, "foo": 2}),
    ("raster", "raster", None, {}),
    ("ardm:k=4", "ardm", None, {"k": 4}),
    ("ardm:k=4:order=contiguous", "ardm", None, {"k": 4, "order": "contiguous"}),
    ("ardm:dp=8", "ardm", None, {"dp": 8}),
    ("ardm:sizes=(1,7,56)", "ardm", None, {"sizes": (1, 7, 56)}),
    ("ardm:sizes=(1,7),temperature=0.5", "ardm", None, {"sizes": (1, 7), "temperature": 0.5}),
    ("oneshot", "oneshot", None, {}),
])
def test_parse_and_round_trip(text, name, steps, options):
  spec = parse_spec(text)
  assert (spec.name, spec.steps, spec.option_dict) == (name, steps, options)
  assert parse_spec(str(spec)) == spec  # str() writes the grammar back
  assert parse_spec(spec) is spec
  hash(spec)  # hashable: a static argument of compiled loops


@pytest.mark.parametrize("text,message", [
    ("", "non-empty"), ("ddim:5:6", "two step counts"), ("ddim:x", "must be an integer"),
    ("ddim:5:=3", "name=value"), ("ddim:5:eta=", "name=value"), ("ddim:5:eta=1:eta=2", "twice"),
    ("9lives", "not a sampler name"),
])
def test_malformed_specs_name_the_problem(text, message):
  with pytest.raises(ValueError, match=message):
    parse_spec(text)


def test_check_spec_lists_what_exists():
  known = {"ddim": {"eta": 0.0}, "ddpm": {"noise": 1.0}}
  check_spec(parse_spec("ddim:5:eta=1"), known, process="toy", needs_steps=["ddim", "ddpm"])
  with pytest.raises(ValueError, match="unknown sampler 'euler' for the toy process; known: "
                     "ddim, ddpm"):
    check_spec(parse_spec("euler:5"), known, process="toy")
  with pytest.raises(ValueError, match=r"no option\(s\) \['gamma'\]; its options: eta"):
    check_spec(parse_spec("ddim:5:gamma=1"), known, process="toy", needs_steps=["ddim"])
  with pytest.raises(ValueError, match="needs a step count"):
    check_spec(parse_spec("ddim"), known, process="toy", needs_steps=["ddim"])
  with pytest.raises(ValueError, match="takes no step count"):
    check_spec(parse_spec("ddim:5"), known, process="toy")


def test_label_is_readable():
  assert parse_spec("ddim:50:eta=0.5").label == "DDIM 50 (eta=0.5)"
  assert SampleSpec("raster").label == "raster"
