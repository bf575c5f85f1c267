import pytest

from aledit.edits import Edit, EditError, EditType, infer_edit_type, parse_edit, self_replace_for


@pytest.mark.parametrize(
    "source,target,expected",
    [
        ("car", "red-colored car", EditType.COLOR),
        ("car", "bus", EditType.OBJECT),
        ("car", "car made of gold", EditType.MATERIAL),
        ("car", "blue-colored bus", EditType.COLOR_OBJECT),
        ("car", "bus made of gold", EditType.OBJECT_MATERIAL),
        ("yoga mat", "pink-colored yoga mat", EditType.COLOR),
        ("green bell pepper", "green bell pepper made of jade", EditType.MATERIAL),
        ("tree", "yellow-colored Christmas tree", EditType.COLOR_OBJECT),
        ("wolf", "Pink-Colored  Wolf", EditType.COLOR),
    ],
)
def test_infer_edit_type_follows_the_templates(source, target, expected):
    assert infer_edit_type(source, target) is expected


def test_schedule_per_type_and_explicit_override():
    assert self_replace_for([Edit("car", "red-colored car")]) == 1.0
    assert self_replace_for([Edit("car", "car made of gold")]) == 0.6
    assert self_replace_for([Edit("car", "bus")]) == 0.5
    # mixed types: the edit that needs most freedom wins
    assert self_replace_for([Edit("car", "red-colored car"), Edit("tree", "tree made of gold")]) == 0.6
    assert Edit("car", "bus", "color").resolved_type is EditType.COLOR


def test_parse_edit():
    e = parse_edit("  wolf ->  pink-colored wolf ")
    assert (e.source, e.target, e.edit_type) == ("wolf", "pink-colored wolf", None)
    assert parse_edit("car -> bus : material").edit_type is EditType.MATERIAL
    for bad in ["wolf", "wolf -> ", " -> dog", "a -> b -> c"]:
        with pytest.raises(EditError):
            parse_edit(bad)
    with pytest.raises(EditError, match="unknown edit type"):
        Edit("a", "b", "texture")
    with pytest.raises(EditError):
        self_replace_for([])
