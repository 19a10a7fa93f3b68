"""Cut a CustomResourceDefinition's OpenAPI schema down to what deploy/ uses, for tests/deploy/schemas/.

    python tests/deploy/prune_crd.py KSERVE/config/crd/full/serving.kserve.io_servingruntimes.yaml v1alpha1 \
        deploy/kserve/servingruntime.yaml > tests/deploy/schemas/servingruntime.v1alpha1.json

Every object the manifests reach keeps all its property names (so an unknown or misspelt field is an error, as
`kubectl apply --validate=strict` makes it) and the full schema of the properties they set; properties they do not
set keep their name with an empty schema. Descriptions are dropped. Rerun it when a manifest sets a new field.
"""

from __future__ import annotations

import json
import sys

import yaml


def prune(schema: dict, values: list) -> dict:
    if not values:
        return {}
    out = {k: v for k, v in schema.items() if k not in ("description", "properties", "items", "additionalProperties")}
    if "properties" in schema:
        objects = [v for v in values if isinstance(v, dict)]
        out["properties"] = {
            k: prune(sub, [o[k] for o in objects if k in o]) for k, sub in schema["properties"].items()
        }
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = prune(
            schema["additionalProperties"], [x for v in values if isinstance(v, dict) for x in v.values()]
        )
    if "items" in schema:
        out["items"] = prune(schema["items"], [x for v in values if isinstance(v, list) for x in v])
    return out


def main(crd_path: str, version: str, *manifests: str) -> None:
    with open(crd_path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    (schema,) = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version]
    kind = crd["spec"]["names"]["kind"]
    docs = []
    for path in manifests:
        with open(path, encoding="utf-8") as f:
            docs += [d for d in yaml.safe_load_all(f) if d and d.get("kind") == kind]
    pruned = prune(schema, docs)
    pruned["$comment"] = f"{crd['metadata']['name']} {version}, pruned by tests/deploy/prune_crd.py from {crd_path}"
    json.dump(pruned, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
