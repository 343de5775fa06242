"""Turn a posed, placed figure into 2-D drawing primitives ordered back to front.

Primitives are in final image pixels (x right, y down, pixel centres at integers):
- "capsule": a tapered limb between two points with a radius at each end,
- "hull": a convex polygon (torso, pelvis, skirt, long hair),
- "head": an ellipsoid rasterized per pixel by the painter (hair line, eyes and shading come from the
  3-D surface point under each pixel).
"""

from dataclasses import dataclass, field

import numpy as np

from pipeline.pose.keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES, NUM_KEYPOINTS
from pipeline.synthetic.appearance import Appearance, Texture
from pipeline.synthetic.figures import BodyShape, View, coco_keypoints_3d, keypoint_normals, pose_skeleton, project
from pipeline.synthetic.poses import Pose


@dataclass
class Part:
    name: str
    kind: str                      # capsule | hull | head
    points: np.ndarray             # capsule (2, 2) ends; hull (N, 2) outline; head (1, 2) centre
    texture: Texture
    depth: float                   # camera z of the part, + nearer; parts are painted in increasing depth
    radii: tuple[float, float] = (0.0, 0.0)   # capsule radii in pixels; hull: (half width for shading, 0)
    axis: np.ndarray | None = None  # hull shading axis (2, 2)
    head: dict = field(default_factory=dict)  # head: ellipsoid matrix and face layout for the painter
    shade: float = 1.0             # brightness factor (far-side limbs a little darker)


@dataclass
class Figure:
    """A drawable person: parts back to front, and keypoints with what decides their visibility."""
    parts: list[Part]
    keypoints: np.ndarray          # (K, 2) image pixels
    facing: np.ndarray             # (K,) camera-z of the keypoint's surface normal (1 where any side works)
    origin: np.ndarray             # (2,) pixel of the ground point under the pelvis, texture anchor
    height: float                  # standing height in pixels, texture scale

    def extent(self) -> np.ndarray:
        """[x0, y0, x1, y1] of everything drawn for this figure (before clipping to the image)."""
        boxes = []
        for p in self.parts:
            r = max(p.radii) if p.kind == "capsule" else 1.2 * p.head.get("radius", 0.0)  # 1.2: the nose
            boxes.append(np.concatenate([p.points.min(0) - r, p.points.max(0) + r]))
        b = np.stack(boxes)
        return np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)])


# Which drawn parts a keypoint may be seen on; anything else covering it means it is occluded.
KEYPOINT_OWNERS: dict[str, tuple[str, ...]] = {
    "nose": ("head",), "left_eye": ("head",), "right_eye": ("head",),
    "left_ear": ("head",), "right_ear": ("head",),
    **{f"{s}_shoulder": ("torso", f"upper_arm_{s[0]}", "neck") for s in ("left", "right")},
    **{f"{s}_elbow": (f"upper_arm_{s[0]}", f"forearm_{s[0]}") for s in ("left", "right")},
    **{f"{s}_wrist": (f"forearm_{s[0]}", f"hand_{s[0]}") for s in ("left", "right")},
    **{f"{s}_hip": ("pelvis", "torso", "skirt", f"thigh_{s[0]}") for s in ("left", "right")},
    **{f"{s}_knee": (f"thigh_{s[0]}", f"shin_{s[0]}", "skirt") for s in ("left", "right")},
    **{f"{s}_ankle": (f"shin_{s[0]}", f"foot_{s[0]}") for s in ("left", "right")},
}
# Parts joined at a joint: the painter draws no outline between them.
JOINED: set[frozenset[str]] = {frozenset(p) for p in (
    [("torso", "pelvis"), ("torso", "neck"), ("neck", "head"), ("pelvis", "skirt")]
    + [(a + s, b + s) for s in ("_l", "_r") for a, b in (
        ("upper_arm", "forearm"), ("forearm", "hand"), ("thigh", "shin"), ("shin", "foot"))]
    + [(a, b + s) for s in ("_l", "_r") for a, b in (("pelvis", "thigh"), ("torso", "upper_arm"))]
)}

# Unit-sphere head points used for the long-hair outline (head frame).
_LONG_HAIR = np.array([[sx * x, y, z] for sx in (-1, 1) for x, y, z in (
    (1.05, 0.2, -0.3), (1.15, -0.6, -0.3), (1.15, -1.3, -0.4), (1.0, -1.75, -0.6), (0.7, -1.95, -0.8),
    (0.3, -2.02, -0.9), (0.8, 0.5, -0.7), (0.3, 0.2, -1.05))])


def _capsule(name, a, b, ra, rb, tex, depth, shade=1.0) -> Part:
    return Part(name, "capsule", np.stack([a, b]), tex, float(depth), (float(ra), float(rb)), shade=shade)


def build_figure(shape: BodyShape, pose: Pose, look: Appearance, view: View) -> Figure:
    """Pose the skeleton, project it through `view` and list the parts to paint, back to front."""
    skel = pose_skeleton(shape, pose)
    keys = [k for k in skel if k != "frames"]
    flat_xy, flat_z = project(view, np.concatenate([skel[k].reshape(-1, 3) for k in keys]))
    xy, z, at = {}, {}, 0
    for k in keys:                       # split the one batched projection back into named arrays
        n = skel[k].size // 3
        xy[k] = flat_xy[at:at + n].reshape(skel[k].shape[:-1] + (2,))
        z[k] = flat_z[at:at + n].reshape(skel[k].shape[:-1])
        at += n
    s, g = view.height, shape.girth
    parts: list[Part] = []
    # the side farther from the camera is drawn a little darker, a cheap depth cue
    near = [float(z["shoulders"][i] + z["hips"][i]) for i in range(2)]
    shade = [1.0 if near[i] >= near[1 - i] else 0.85 for i in range(2)]
    for i, sd in enumerate(("l", "r")):
        heel = skel["ankles"][i] + 0.25 * (skel["ankles"][i] - skel["toes"][i]) - np.array([0, 0.02, 0])
        heel_xy, heel_z = project(view, heel)
        leg_tex = look.material("lower_leg" if look.skirt else "pants")
        limbs = (
            ("upper_arm", "shoulders", "elbows", 0.033 * g, 0.028 * g, look.shirt, 0.01),
            ("forearm", "elbows", "wrists", 0.028 * g, 0.02 * g, look.material("sleeve"), 0.012),
            ("hand", "wrists", "hand_tips", 0.021, 0.016, look.skin, 0.014),
            ("thigh", "hips", "knees", 0.064 * g, 0.043 * g, leg_tex, 0.004),
            ("shin", "knees", "ankles", 0.043 * g, 0.028 * g, look.material("lower_leg"), 0.006),
        )
        for name, a, b, ra, rb, tex, bias in limbs:
            depth = 0.5 * (z[a][i] + z[b][i]) + bias
            parts.append(_capsule(f"{name}_{sd}", xy[a][i], xy[b][i], ra * s, rb * s, tex, depth, shade[i]))
        parts.append(_capsule(f"foot_{sd}", heel_xy, xy["toes"][i], 0.026 * s, 0.021 * s, look.shoes,
                              0.5 * (heel_z + z["toes"][i]) + 0.008, shade[i]))

    def hull_part(name, key, tex, top, bottom, bias=0.0):
        half_w = 0.5 * float(np.ptp(xy[key][:, 0]))
        axis = np.stack([xy[top].reshape(-1, 2).mean(0), xy[bottom].reshape(-1, 2).mean(0)])
        return Part(name, "hull", xy[key], tex, float(z[key].mean()) + bias, (max(half_w, 1.0), 0.0), axis)

    parts.append(hull_part("torso", "chest_ring", look.shirt, "neck", "waist"))
    parts.append(hull_part("pelvis", "pelvis_ring", look.pants, "waist", "pelvis", 0.008))
    if look.skirt:
        knees = skel["hips"] + 0.75 * (skel["knees"] - skel["hips"])          # (2, 3) hem corners
        spread = np.abs(knees[0] - knees[1])
        t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        hem = knees.mean(0) + np.stack([(spread[0] / 2 + 0.07 * g) * np.cos(t), 0 * t,
                                        (spread[2] / 2 + 0.08 * g) * np.sin(t)], axis=1)
        pts, depth = project(view, np.concatenate([skel["waist"], hem]))
        half_w = 0.5 * float(np.ptp(pts[:, 0]))
        parts.append(Part("skirt", "hull", pts, look.pants, float(depth.mean()) + 0.02, (half_w, 0.0),
                          np.stack([xy["waist"].mean(0), pts[12:].mean(0)])))
    parts.append(_capsule("neck", xy["neck"], xy["head_base"], 0.028 * g * s, 0.026 * g * s, look.skin,
                          0.5 * (z["neck"] + z["head_base"]) + 0.015))

    cam = view.rotation()
    r_head = skel["frames"]["head"]
    radii = np.array(shape.head_r)
    m = cam @ r_head @ np.diag(radii) * s                  # unit sphere (head frame) -> camera offset, pixels
    m[1] *= -1                                             # camera y up -> image y down
    head = {"matrix": m, "radius": float(np.linalg.norm(m[:2], axis=1).max()), "look": look,
            "normal_matrix": cam @ r_head @ np.diag(1 / radii)}
    parts.append(Part("head", "head", xy["head"][None], look.skin, float(z["head"]) + 0.03, head=head))
    if look.hair_style == "long":
        pts, depth = project(view, skel["head"] + (_LONG_HAIR * radii) @ r_head.T)
        half_w = 0.5 * float(np.ptp(pts[:, 0]))
        parts.append(Part("hair", "hull", pts, look.hair, float(depth.mean()), (half_w, 0.0),
                          np.stack([xy["head"], pts.mean(0)])))

    parts.sort(key=lambda p: p.depth)
    normals = keypoint_normals(skel)                     # (K, 3) body frame, zero where any side will do
    facing = np.where(np.any(normals != 0, axis=1), (normals @ cam.T)[:, 2], 1.0)
    origin = np.array([view.x, view.y])
    return Figure(parts, project(view, coco_keypoints_3d(skel))[0], facing, origin, s)


def owner_table(part_names: list[str]) -> np.ndarray:
    """(K, len(part_names)) bool: may keypoint k be seen on part j."""
    table = np.zeros((NUM_KEYPOINTS, len(part_names)), dtype=bool)
    for k, name in enumerate(KEYPOINT_NAMES):
        owners = KEYPOINT_OWNERS[name]
        table[k] = [p in owners for p in part_names]
    return table


# Minimum surface facing (camera-z of the normal) for a keypoint to count as visible.
FACING_MIN = np.full(NUM_KEYPOINTS, -2.0)
FACING_MIN[KEYPOINT_INDEX["nose"]] = -0.3
FACING_MIN[[KEYPOINT_INDEX["left_eye"], KEYPOINT_INDEX["right_eye"]]] = -0.25
FACING_MIN[[KEYPOINT_INDEX["left_ear"], KEYPOINT_INDEX["right_ear"]]] = -0.2
FACING_MIN[[KEYPOINT_INDEX[f"{s}_{j}"] for s in ("left", "right") for j in ("shoulder", "hip")]] = -0.8
