"""``synthetic-diffraction``'s ``model_changes``: the laser-on (light) state of a pump-probe run, as edits of the model.

    model_changes:
      - {move: "//A/62/!N,CA,C,O", by: [1.5, 0, 0]}      # Trp62's side chain, 1.5 Å along x (Cartesian Å)
      - {occupancy: "//A/101-103", to: 0.5}                # these residues at half occupancy
      - {add: [{element: O, xyz: [10.0, 12.5, 3.0], b: 20, occupancy: 1}]}   # a small group (one residue, new chain)

A selection is a gemmi selection string (https://gemmi.readthedocs.io "Selections": /model/chain/residues/atoms).
Its syntax is checked here, when gemmi is installed (the model option needs it anyway); that it selects at least
one atom can only be checked against the model file, when the source (or ``changed_model``) applies the changes.
Changes apply in order to the model as read (hydrogens removed, first model only), so a later change sees an
earlier one's atoms.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from photonstream.errors import ConfigError

MAX_CHANGES = 20
MAX_ADDED_ATOMS = 50
MAX_SHIFT_A = 10.0


def _gemmi_or_none():  # type: ignore[no-untyped-def]
    try:
        import gemmi
    except ImportError:  # the source reports the missing package when it loads the model
        return None
    return gemmi


def _selection(value: str) -> str:
    if not value.strip() or "\x00" in value:
        raise ValueError("give a gemmi selection, e.g. '//A/62' or '/1/A/50/CD1'")
    gemmi = _gemmi_or_none()
    if gemmi is not None:
        try:
            gemmi.Selection(value)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{value!r} is not a gemmi selection ({exc})") from None
    return value


def _element(value: str) -> str:
    gemmi = _gemmi_or_none()
    if not re.fullmatch(r"[A-Za-z]{1,2}", value) or (gemmi is not None and gemmi.Element(value).atomic_number == 0):
        raise ValueError(f"{value!r} is not a chemical element symbol")
    return value.capitalize()


def _shift(value: tuple[float, float, float]) -> tuple[float, float, float]:
    length = math.hypot(*value)
    if not length <= MAX_SHIFT_A:
        raise ValueError(f"|by| = {length:.3g} Å; at most {MAX_SHIFT_A} Å")
    return value


Selection = Annotated[str, Field(max_length=500), AfterValidator(_selection)]
Coordinate = Annotated[float, Field(ge=-10_000.0, le=10_000.0, allow_inf_nan=False)]


class _Change(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MoveAtoms(_Change):
    move: Selection = Field(description="the atoms to move (gemmi selection)")
    by: Annotated[tuple[Coordinate, Coordinate, Coordinate], AfterValidator(_shift)] = Field(
        description="shift (Å, Cartesian), |by| ≤ 10"
    )


class SetOccupancy(_Change):
    occupancy: Selection = Field(description="the atoms whose occupancy changes (gemmi selection)")
    to: float = Field(ge=0.0, le=1.0, description="their new occupancy")


class NewAtom(_Change):
    element: Annotated[str, Field(max_length=2), AfterValidator(_element)] = Field(description="element symbol")
    xyz: tuple[Coordinate, Coordinate, Coordinate] = Field(description="position (Å, Cartesian)")
    b: float = Field(20.0, ge=0.0, le=500.0, description="isotropic B (Å²)")
    occupancy: float = Field(1.0, ge=0.0, le=1.0, description="occupancy")


class AddAtoms(_Change):
    add: tuple[NewAtom, ...] = Field(min_length=1, max_length=MAX_ADDED_ATOMS, description="the atoms of the new group")


_TAGS = {"move": "move_atoms", "occupancy": "set_occupancy", "add": "add_atoms"}  # an error's place names the tag


def _kind(value: Any) -> str | None:
    keys = set(value) if isinstance(value, dict) else {key for key in _TAGS if hasattr(value, key)}
    found = [tag for key, tag in _TAGS.items() if key in keys]
    return found[0] if len(found) == 1 else None  # None: pydantic names the three allowed forms


ModelChange = Annotated[
    Annotated[MoveAtoms, Tag("move_atoms")]
    | Annotated[SetOccupancy, Tag("set_occupancy")]
    | Annotated[AddAtoms, Tag("add_atoms")],
    Discriminator(
        _kind,
        custom_error_type="model_change",
        custom_error_message="each change is {move, by}, {occupancy, to} or {add}",
    ),
]


Changes = tuple[MoveAtoms | SetOccupancy | AddAtoms, ...]


def _bounded(changes: Changes) -> Changes:
    added = sum(len(change.add) for change in changes if isinstance(change, AddAtoms))
    if added > MAX_ADDED_ATOMS:
        raise ValueError(f"{added} added atoms in all; at most {MAX_ADDED_ATOMS} (a small group)")
    return changes


ModelChanges = Annotated[tuple[ModelChange, ...], Field(min_length=1, max_length=MAX_CHANGES), AfterValidator(_bounded)]
_ADAPTER: TypeAdapter[Changes] = TypeAdapter(ModelChanges)


def parse_changes(changes: Any) -> Changes:
    """Validated changes from their options or JSON form (a start message's ``model_changes``, or its JSON text)."""
    if isinstance(changes, str):
        return _ADAPTER.validate_json(changes)
    return _ADAPTER.validate_python([c.model_dump() if isinstance(c, BaseModel) else c for c in changes])


def changes_key(changes: Any) -> str:
    """One canonical JSON text per set of changes: the cache key of the light model."""
    dumped = _ADAPTER.dump_python(parse_changes(changes), mode="json")
    return json.dumps(dumped, sort_keys=True, separators=(",", ":"))


class TouchedAtoms:
    """What the changes did, atom by atom (atoms numbered through their ``serial``, which the density ignores)."""

    def __init__(self) -> None:
        self.before: dict[int, tuple[tuple[float, float, float] | None, float | None]] = {}  # None: added
        self.kinds: dict[int, set[str]] = {}

    def note(self, atom: Any, kind: str) -> None:
        if atom.serial not in self.before:
            self.before[atom.serial] = ((atom.pos.x, atom.pos.y, atom.pos.z), float(atom.occ))
        self.kinds.setdefault(atom.serial, set()).add(kind)


def apply_changes(gemmi: Any, structure: Any, changes: Changes, label: str) -> TouchedAtoms:
    """Edit ``structure`` (one model) in place; ConfigError when a selection selects no atom."""
    model = structure[0]
    serial = 0
    for cra in model.all():
        serial += 1
        cra.atom.serial = serial
    touched = TouchedAtoms()
    for number, change in enumerate(changes):
        if isinstance(change, AddAtoms):
            chain = gemmi.Chain(_free_chain_name(model))
            residue = gemmi.Residue()
            residue.name, residue.seqid, residue.het_flag = "UNL", gemmi.SeqId(number + 1, " "), "H"
            for i, new in enumerate(change.add):
                atom = gemmi.Atom()
                atom.name, atom.element = f"{new.element.upper()}{i + 1}", gemmi.Element(new.element)
                atom.pos, atom.b_iso, atom.occ = gemmi.Position(*new.xyz), new.b, new.occupancy
                serial += 1
                atom.serial = serial
                residue.add_atom(atom)
                touched.before[serial] = (None, None)
                touched.kinds[serial] = {"add"}
            chain.add_residue(residue)
            model.add_chain(chain)
            continue
        text = change.move if isinstance(change, MoveAtoms) else change.occupancy
        selection = gemmi.Selection(text)
        selected = [a for m in selection.models(structure) for c in selection.chains(m) for r in selection.residues(c)
                    for a in selection.atoms(r)]  # fmt: skip
        if not selected:
            kind = "move" if isinstance(change, MoveAtoms) else "occupancy"
            raise ConfigError(f"model_changes[{number}].{kind}: {text!r} selects no atom of model {label}")
        for atom in selected:
            if isinstance(change, MoveAtoms):
                touched.note(atom, "move")
                atom.pos = gemmi.Position(
                    atom.pos.x + change.by[0], atom.pos.y + change.by[1], atom.pos.z + change.by[2]
                )
            else:
                touched.note(atom, "occupancy")
                atom.occ = change.to
    return touched


def _free_chain_name(model: Any) -> str:
    names = {chain.name for chain in model}
    return next(name for name in ("Z", *(f"Z{i}" for i in range(1, len(names) + 2))) if name not in names)
