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


@pytest.mark.parametrize("text,sentence", [
    ("ddim:abc", "part 'abc' that is neither a step count (which must be an integer, like 50) "
                 "nor an option (name=value, like eta=0.5)"),
    ("ddim:5:eta", "part 'eta' that is neither a step count"),  # not "two step counts"
    ("ddim:5:6", "gives two step counts, 5 and 6; give one"),
    ("ddim::5", "has an empty part (two ':' in a row, or a ':' at the end)"),
    ("ddim:5:=3", "option '=3' with no name before its '='"),
    ("ddim:5:eta=", "option 'eta=' with no value after its '='"),
    ("ddim:5:1x=2", "option named '1x', which is not a name"),
    ("ddim:5:eta=1:eta=2", "gives option 'eta' twice"),
    (":5", "has no sampler name before its first ':'"),
])
def test_malformed_spec_messages_are_one_sentence_naming_the_bad_part(text, sentence):
  """The whole message: 'sampling spec TEXT' and a sentence about the part that is wrong."""
  with pytest.raises(ValueError) as info:
    parse_spec(text)
  message = str(info.value)
  assert message.startswith(f"sampling spec {text!r} ") and sentence in message, message
  assert "\n" not in message and "an option look like" not in message  # the old garble


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
