"""Body proportions, forward kinematics and camera projection of a synthetic human figure.

Lengths are in units of the figure's standing height (1.0 = feet to top of head). The body frame has
x = the person's left, y = up, z = the way the person faces; the figure stands on y = 0 with its pelvis
above the origin. The camera frame has x = image right, y = up, z = towards the viewer, so a person
with yaw 0 faces the camera, yaw +90 deg walks to the image right and yaw 180 deg shows the back.
"""

from dataclasses import dataclass

import numpy as np

from pipeline.pose.keypoints import KEYPOINT_INDEX, NUM_KEYPOINTS
from pipeline.synthetic.poses import DEG, Pose

RING_POINTS = 12  # points per elliptic cross-section of the torso and head


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@dataclass(frozen=True)
class BodyShape:
    spine: float = 0.29          # pelvis centre to the base of the neck
    neck: float = 0.05
    head_r: tuple[float, float, float] = (0.052, 0.068, 0.062)   # head ellipsoid semi-axes (x, y, z)
    shoulder_half: float = 0.125  # half the distance between shoulder joints
    hip_half: float = 0.085
    upper_arm: float = 0.175
    forearm: float = 0.155
    hand: float = 0.07
    thigh: float = 0.245
    shin: float = 0.245
    foot: float = 0.11
    ankle_height: float = 0.04
    girth: float = 1.0           # scales every width
    hip_width: float = 1.0       # extra scale of the pelvis width (wider in many women)
    chest_width: float = 1.0


def sample_body_shape(rng: np.random.Generator) -> BodyShape:
    """Adult proportions with natural spread, sometimes a child (bigger head, shorter limbs)."""
    u = rng.uniform
    child = rng.random() < 0.08
    head = u(0.93, 1.08) * (1.3 if child else 1.0)
    limbs, legs = u(0.94, 1.06), u(0.94, 1.06) * (0.9 if child else 1.0)
    return BodyShape(
        spine=0.29 * u(0.95, 1.05), neck=0.05 * u(0.8, 1.2),
        head_r=(0.052 * head, 0.068 * head, 0.062 * head),
        shoulder_half=0.125 * u(0.88, 1.12) * (0.85 if child else 1.0), hip_half=0.085 * u(0.9, 1.15),
        upper_arm=0.175 * limbs, forearm=0.155 * limbs, hand=0.07 * limbs,
        thigh=0.245 * legs, shin=0.245 * legs, foot=0.11 * u(0.9, 1.1),
        girth=u(0.85, 1.3) * (0.85 if child else 1.0), hip_width=u(0.95, 1.25), chest_width=u(0.9, 1.1),
    )


# Torso cross-sections: (height offset, half width, half depth), before girth scaling.
_CHEST_RINGS = ((0.0, 0.06, 0.045), (-0.03, 0.025, 0.06), (-0.11, 0.015, 0.075))  # widths added to shoulder_half
_WAIST = (0.1, 0.105, 0.065)           # height above the pelvis, half width, half depth
_PELVIS_RINGS = ((0.01, 0.045, 0.072), (-0.065, 0.0, 0.055))  # widths added to hip_half


def _ring(center: np.ndarray, frame: np.ndarray, half_w: float, half_d: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
    local = np.stack([half_w * np.cos(t), np.zeros_like(t), half_d * np.sin(t)], axis=1)  # (R, 3)
    return center + local @ frame.T


def pose_skeleton(shape: BodyShape, pose: Pose) -> dict[str, np.ndarray]:
    """Forward kinematics: named 3-D points (body frame, feet on y=0) and unit vectors used for shading.

    Joint arrays of shape (2, 3) hold (left, right). Rings are (R, 3) outlines of the torso sections.
    Frames (3, 3) are rotation matrices whose columns are the local x, y, z axes.
    """
    g = shape.girth
    r_spine = rot_z(pose.torso_roll) @ rot_x(pose.torso_pitch)
    r_chest = r_spine @ rot_y(pose.torso_twist)
    r_waist = r_spine @ rot_y(0.3 * pose.torso_twist)
    r_head = r_chest @ rot_y(pose.head_yaw) @ rot_x(pose.head_pitch) @ rot_z(pose.head_roll)
    up, down = np.array([0.0, 1.0, 0.0]), np.array([0.0, -1.0, 0.0])

    pelvis = np.zeros(3)
    neck = r_spine @ (up * shape.spine)
    head_base = neck + r_chest @ rot_x(0.4 * pose.head_pitch + 10 * DEG) @ (up * shape.neck)
    hx, hy, hz = shape.head_r
    head = head_base + r_head @ np.array([0.0, 0.85 * hy, 0.1 * hz])
    sides = np.array([1.0, -1.0])  # left is +x

    shoulders, elbows, wrists, hand_tips = (np.zeros((2, 3)) for _ in range(4))
    hips, knees, ankles, toes = (np.zeros((2, 3)) for _ in range(4))
    frames = {}
    for i, s in enumerate(sides):
        shoulders[i] = neck + r_chest @ np.array([s * shape.shoulder_half * shape.chest_width, -0.03, -0.005])
        r_upper = r_chest @ rot_z(s * pose.shoulder_abd[i]) @ rot_x(-pose.shoulder_flex[i])
        elbows[i] = shoulders[i] + r_upper @ (down * shape.upper_arm)
        r_fore = r_upper @ rot_y(-s * pose.arm_twist[i]) @ rot_x(-pose.elbow[i])
        wrists[i] = elbows[i] + r_fore @ (down * shape.forearm)
        hand_tips[i] = wrists[i] + r_fore @ rot_x(-10 * DEG) @ (down * shape.hand)

        hips[i] = pelvis + np.array([s * shape.hip_half * shape.hip_width, 0.0, 0.0])
        r_thigh = rot_z(s * pose.hip_abd[i]) @ rot_x(-pose.hip_flex[i])
        knees[i] = hips[i] + r_thigh @ (down * shape.thigh)
        r_shin = r_thigh @ rot_x(pose.knee[i])
        ankles[i] = knees[i] + r_shin @ (down * shape.shin)
        toes[i] = ankles[i] + r_shin @ rot_x(-(80 * DEG - pose.ankle[i])) @ (down * shape.foot)
        frames[f"upper_arm{i}"], frames[f"forearm{i}"] = r_upper, r_fore

    chest_rings = [
        _ring(neck + r_chest @ (up * dy), r_chest, g * (shape.shoulder_half * shape.chest_width + dw
                                                          if k else dw), g * dd)
        for k, (dy, dw, dd) in enumerate(_CHEST_RINGS)
    ]
    waist = _ring(r_spine @ (up * _WAIST[0]), r_waist, g * _WAIST[1] * shape.hip_width, g * _WAIST[2])
    pelvis_rings = [
        _ring(np.array([0.0, dy, 0.0]), np.eye(3), g * (shape.hip_half * shape.hip_width + dw), g * dd)
        for dy, dw, dd in _PELVIS_RINGS
    ]
    face = {
        "nose": head + r_head @ np.array([0.0, -0.2 * hy, 1.0 * hz]),
        "eyes": head + np.stack([r_head @ np.array([s * 0.42 * hx, 0.12 * hy, 0.8 * hz]) for s in sides]),
        "ears": head + np.stack([r_head @ np.array([s * 0.98 * hx, 0.0, -0.05 * hz]) for s in sides]),
        "mouth": head + r_head @ np.array([0.0, -0.55 * hy, 0.85 * hz]),
    }
    pts = {
        "pelvis": pelvis, "neck": neck, "head_base": head_base, "head": head, **face,
        "shoulders": shoulders, "elbows": elbows, "wrists": wrists, "hand_tips": hand_tips,
        "hips": hips, "knees": knees, "ankles": ankles, "toes": toes,
        "chest_ring": np.concatenate(chest_rings + [waist]), "pelvis_ring": np.concatenate([waist] + pelvis_rings),
        "waist": waist,
    }
    # stand on the floor: the lowest sole point touches y = 0
    floor = min((ankles[:, 1] - shape.ankle_height).min(), (toes[:, 1] - 0.015).min())
    for k in pts:
        pts[k] = pts[k] - np.array([0.0, floor, 0.0])
    pts["frames"] = {"head": r_head, "chest": r_chest, "pelvis": np.eye(3), **frames}
    return pts


@dataclass(frozen=True)
class View:
    """Where and how a figure is seen: yaw about the vertical, camera pitch, perspective and placement."""
    yaw: float = 0.0             # radians, 0 faces the camera, +pi/2 faces image right
    pitch: float = 0.0           # radians, + means the camera looks down on the figure
    distance: float = 6.0        # camera distance in body heights (weak perspective; large = orthographic)
    x: float = 0.0               # image position of the ground point under the pelvis, pixels
    y: float = 0.0
    height: float = 100.0        # standing height in pixels

    def rotation(self) -> np.ndarray:
        return rot_x(self.pitch) @ rot_y(self.yaw)


def project(view: View, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame points (..., 3) -> image xy (..., 2) in pixels and depth (...,) in body units (+ = nearer)."""
    cam = points @ view.rotation().T                     # (..., 3)
    mid = 0.5
    f = view.distance / np.maximum(view.distance - cam[..., 2], 1e-3)  # weak perspective about mid-height
    x = view.x + view.height * f * cam[..., 0]
    y = view.y - view.height * (mid + f * (cam[..., 1] - mid))
    return np.stack([x, y], axis=-1), cam[..., 2]


def coco_keypoints_3d(skel: dict[str, np.ndarray]) -> np.ndarray:
    """The 17 COCO keypoints of a posed skeleton, (K, 3) body-frame points."""
    kp = np.zeros((NUM_KEYPOINTS, 3))
    kp[KEYPOINT_INDEX["nose"]] = skel["nose"]
    for i, side in enumerate(("left", "right")):
        for name, key in (("eye", "eyes"), ("ear", "ears"), ("shoulder", "shoulders"), ("elbow", "elbows"),
                          ("wrist", "wrists"), ("hip", "hips"), ("knee", "knees"), ("ankle", "ankles")):
            kp[KEYPOINT_INDEX[f"{side}_{name}"]] = skel[key][i]
    return kp


def keypoint_normals(skel: dict[str, np.ndarray]) -> np.ndarray:
    """(K, 3) outward surface directions at each keypoint; None-like zeros where any side will do.

    A keypoint on the face or on the side of the head or torso is hidden when its surface turns away
    from the camera, even if nothing is drawn in front of it.
    """
    fr = skel["frames"]
    normals = np.zeros((NUM_KEYPOINTS, 3))
    head, chest, pelvis = fr["head"], fr["chest"], fr["pelvis"]
    normals[KEYPOINT_INDEX["nose"]] = head[:, 2]
    for i, (side, s) in enumerate((("left", 1.0), ("right", -1.0))):
        normals[KEYPOINT_INDEX[f"{side}_eye"]] = head @ np.array([s * np.sin(35 * DEG), 0, np.cos(35 * DEG)])
        normals[KEYPOINT_INDEX[f"{side}_ear"]] = head @ np.array([s, 0.0, -0.15])
        normals[KEYPOINT_INDEX[f"{side}_shoulder"]] = chest[:, 0] * s
        normals[KEYPOINT_INDEX[f"{side}_hip"]] = pelvis[:, 0] * s
    n = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, n, out=np.zeros_like(normals), where=n > 0)
