"""A small, strict subset of kustomize, so the tests can render deploy/ without the kustomize binary.

In a cluster use the real thing (``kubectl apply -k deploy/overlays/example``); this renderer exists because no
kustomize/helm binary can be installed where fleetpilot's tests run. It implements exactly the fields deploy/
uses and **refuses every other field** (so a kustomization that uses something it does not know fails the tests
instead of being rendered wrongly):

* ``resources``: YAML files (several documents each) and directories holding a ``kustomization.yaml`` (rendered
  first, with their own transformations: a base);
* ``configMapGenerator``: ``name``, ``namespace``, ``behavior`` (create | replace | merge), ``files`` (``path`` or
  ``key=path``), ``literals`` (``key=value``), ``options`` (``disableNameSuffixHash`` must be true: the hash
  suffix is not reproduced, ``labels``, ``annotations``);
* ``patches``: ``path`` or inline ``patch``, optional ``target`` (group, version, kind, name, namespace). A patch
  that is a YAML list is an RFC 6902 JSON patch; a mapping is a strategic-merge patch (lists of objects merge by
  ``name``, ``null`` deletes a key) aimed at its own kind/name unless a target is given;
* ``namespace`` (namespaced kinds only; ServiceAccount subjects of RoleBindings whose namespace is empty or
  ``default``, like kustomize's ``setRoleBindingSubjects: defaultOnly``);
* ``labels`` (``pairs``; metadata only: ``includeSelectors``/``includeTemplates`` must be absent or false);
* ``images`` (``name``, ``newName``, ``newTag``, ``digest``) on containers and initContainers of pod templates.

Order, as kustomize: resources, generators, patches, namespace, labels, images. Files are loaded only from inside
the kustomization's own folder (kustomize's default load restrictor) except ``resources`` entries.

Usage: ``python deploy/kustomize_lite.py deploy/overlays/example`` prints the rendered YAML documents.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "render", "to_yaml"]

#: kinds that are not namespaced (the subset a kustomization here may hold)
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
    "StorageClass", "PersistentVolume", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
}
_KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "patches", "images"}
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not implement, or is wrong."""


def _load_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise KustomizeError(f"{path}: every document must be a Kubernetes object with apiVersion and kind")
    return docs


def _kustomization_file(folder: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder}: no kustomization.yaml")


def _inside(root: Path, rel: str) -> Path:
    p = (root / rel).resolve()
    if root.resolve() not in (p, *p.parents):
        raise KustomizeError(f"{root}: {rel!r} is outside the kustomization root (kustomize's load restrictor)")
    if not p.is_file():
        raise KustomizeError(f"{root}: file {rel!r} not found")
    return p


def _key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    md = obj.get("metadata") or {}
    return (obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else "", obj["kind"],
            md.get("namespace") or "", md.get("name") or "")


def render(folder: str | Path) -> list[dict[str, Any]]:
    """Render the kustomization in ``folder`` to a list of Kubernetes objects."""
    root = Path(folder)
    kfile = _kustomization_file(root)
    k = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(k) - _KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: fields not implemented by kustomize_lite: {sorted(unknown)}")
    objs: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        p = root / entry
        objs.extend(render(p) if p.is_dir() else _load_docs(p))
    for gen in k.get("configMapGenerator", []):
        _generate_configmap(root, gen, objs)
    for patch in k.get("patches", []):
        _apply_patch_entry(root, patch, objs)
    if k.get("namespace"):
        _set_namespace(objs, k["namespace"])
    for entry in k.get("labels", []):
        extra = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if extra or entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise KustomizeError(f"{kfile}: labels supports only pairs (metadata labels)")
        for obj in objs:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for image in k.get("images", []):
        _set_image(objs, image)
    keys = [_key(o) for o in objs]
    dup = {x for x in keys if keys.count(x) > 1}
    if dup:
        raise KustomizeError(f"{kfile}: the same object twice: {sorted(dup)}")
    return objs


def _generate_configmap(root: Path, gen: dict[str, Any], objs: list[dict[str, Any]]) -> None:
    allowed = {"name", "namespace", "behavior", "files", "literals", "options"}
    if set(gen) - allowed:
        raise KustomizeError(f"{root}: configMapGenerator fields not implemented: {sorted(set(gen) - allowed)}")
    options = gen.get("options") or {}
    if set(options) - {"disableNameSuffixHash", "labels", "annotations"}:
        raise KustomizeError(f"{root}: configMapGenerator options not implemented: {sorted(options)}")
    if options.get("disableNameSuffixHash") is not True:
        raise KustomizeError(f"{root}: configMapGenerator {gen['name']!r}: set options.disableNameSuffixHash: true "
                             "(kustomize_lite does not reproduce the name hash)")
    data: dict[str, str] = {}
    for f in gen.get("files", []):
        key, _, rel = f.rpartition("=") if "=" in f else ("", "", f)
        p = _inside(root, rel)
        data[key or p.name] = p.read_text(encoding="utf-8")
    for lit in gen.get("literals", []):
        key, sep, value = lit.partition("=")
        if not sep:
            raise KustomizeError(f"{root}: literal {lit!r} is not key=value")
        data[key] = value
    md: dict[str, Any] = {"name": gen["name"]}
    if gen.get("namespace"):
        md["namespace"] = gen["namespace"]
    if options.get("labels"):
        md["labels"] = dict(options["labels"])
    if options.get("annotations"):
        md["annotations"] = dict(options["annotations"])
    behavior = gen.get("behavior", "create")
    existing = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == gen["name"]
                and (not gen.get("namespace") or o["metadata"].get("namespace") == gen["namespace"])]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{root}: ConfigMap {gen['name']!r} exists already (use behavior: replace/merge)")
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": md, "data": data})
        return
    if behavior not in ("replace", "merge") or len(existing) != 1:
        raise KustomizeError(f"{root}: configMapGenerator {gen['name']!r}: behavior {behavior!r} needs exactly one "
                             f"existing ConfigMap of that name (found {len(existing)})")
    target = existing[0]
    if behavior == "replace":
        target["data"] = data
    else:
        target.setdefault("data", {}).update(data)
    for field in ("labels", "annotations"):
        if field in md:
            target["metadata"].setdefault(field, {}).update(md[field])


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    extra = set(target) - {"group", "version", "kind", "name", "namespace"}
    if extra:
        raise KustomizeError(f"patch target fields not implemented: {sorted(extra)}")
    api = obj["apiVersion"]
    group, _, version = api.rpartition("/")
    md = obj.get("metadata") or {}
    want = {"group": group, "version": version, "kind": obj["kind"], "name": md.get("name"),
            "namespace": md.get("namespace")}
    return all(want[k] == v for k, v in target.items())


def _apply_patch_entry(root: Path, entry: dict[str, Any], objs: list[dict[str, Any]]) -> None:
    if set(entry) - {"path", "patch", "target"} or ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{root}: a patch needs exactly one of path/patch (and optionally target): {entry}")
    text = _inside(root, entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
    body = yaml.safe_load(text)
    target = entry.get("target")
    if target is None:
        if not isinstance(body, dict):
            raise KustomizeError(f"{root}: a JSON patch needs a target")
        md = body.get("metadata") or {}
        target = {"kind": body["kind"], "name": md["name"]}
        if md.get("namespace"):
            target["namespace"] = md["namespace"]
    hits = [o for o in objs if _matches(o, target)]
    if not hits:
        raise KustomizeError(f"{root}: patch target {target} matches no object")
    for obj in hits:
        new = json_patch(obj, body) if isinstance(body, list) else strategic_merge(obj, _patch_body(body))
        obj.clear()
        obj.update(new)


def _patch_body(body: dict[str, Any]) -> dict[str, Any]:
    """A strategic-merge patch does not rename its target: drop the identifying fields."""
    out = copy.deepcopy(body)
    md = out.get("metadata") or {}
    md.pop("name", None)
    md.pop("namespace", None)
    return out


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge: mappings merge, ``None`` deletes, lists of objects with ``name`` merge by name."""
    if isinstance(target, dict) and isinstance(patch, dict):
        out = copy.deepcopy(target)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (isinstance(target, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x for x in [*target, *patch])):
        out = [copy.deepcopy(x) for x in target]
        for item in patch:
            idx = next((i for i, x in enumerate(out) if x["name"] == item["name"]), None)
            if idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = strategic_merge(out[idx], item)
        return out
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON patch path must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc


def json_patch(document: dict[str, Any], ops: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add/remove/replace/test (no move/copy) on a copy of ``document``."""
    doc = copy.deepcopy(document)
    for op in ops:
        parts = _pointer(op["path"])
        try:
            parent = _parent(doc, parts)
            last = parts[-1]
            kind = op["op"]
            if kind == "test":
                cur = parent[int(last)] if isinstance(parent, list) else parent[last]
                if cur != op["value"]:
                    raise KustomizeError(f"JSON patch test failed at {op['path']}")
            elif isinstance(parent, list):
                i = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(i, copy.deepcopy(op["value"]))
                elif kind == "replace":
                    parent[i] = copy.deepcopy(op["value"])
                elif kind == "remove":
                    del parent[i]
                else:
                    raise KustomizeError(f"JSON patch op {kind!r} not implemented")
            else:
                if kind in ("replace", "remove") and last not in parent:
                    raise KustomizeError(f"JSON patch {kind} of a missing path {op['path']}")
                if kind in ("add", "replace"):
                    parent[last] = copy.deepcopy(op["value"])
                elif kind == "remove":
                    del parent[last]
                else:
                    raise KustomizeError(f"JSON patch op {kind!r} not implemented")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            if isinstance(exc, KustomizeError):
                raise
            raise KustomizeError(f"JSON patch {op} does not apply: {exc!r}") from None
    return doc


def _set_namespace(objs: list[dict[str, Any]], namespace: str) -> None:
    for obj in objs:
        if obj["kind"] in CLUSTER_SCOPED:
            continue
        obj.setdefault("metadata", {})["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for s in obj.get("subjects") or []:
                if s.get("kind") == "ServiceAccount" and s.get("namespace") in (None, "", "default"):
                    s["namespace"] = namespace


def _split_image(image: str) -> tuple[str, str]:
    """``repo[:tag][@digest]`` -> (repo, rest) with the registry port kept in the repo."""
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_image(objs: list[dict[str, Any]], rule: dict[str, Any]) -> None:
    if set(rule) - {"name", "newName", "newTag", "digest"}:
        raise KustomizeError(f"images fields not implemented: {sorted(rule)}")
    for obj in objs:
        if obj["kind"] not in _POD_TEMPLATE_KINDS:
            continue
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            repo, rest = _split_image(c["image"])
            if repo != rule["name"]:
                continue
            repo = rule.get("newName", repo)
            if "digest" in rule:
                rest = "@" + rule["digest"]
            elif "newTag" in rule:
                rest = ":" + str(rule["newTag"])
            c["image"] = repo + rest


def to_yaml(objs: list[dict[str, Any]]) -> str:
    """The rendered objects as one multi-document YAML stream."""
    return yaml.safe_dump_all(objs, sort_keys=False, default_flow_style=False)


if __name__ == "__main__":  # pragma: no cover - a convenience for humans
    if len(sys.argv) != 2:
        sys.exit("usage: python deploy/kustomize_lite.py DIR")
    try:
        sys.stdout.write(to_yaml(render(sys.argv[1])))
    except (KustomizeError, OSError, yaml.YAMLError) as exc:
        sys.exit(f"kustomize_lite: {exc}")
