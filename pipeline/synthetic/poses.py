"""Joint angles of a synthetic figure: limits, pose families and the walking gait.

A pose is a set of joint angles (radians) in the body frame used by `figures.py`: x = the person's left,
y = up, z = the way the person faces. Arrays of shape (2,) hold (left, right). Positive angles mean:
torso_pitch bends forward, shoulder_flex raises the arm forward, shoulder_abd raises it sideways,
elbow/knee flex the joint, hip_flex swings the thigh forward, head_pitch nods down, head_yaw turns the
head towards the person's left.
"""

from dataclasses import dataclass, field, fields, replace

import numpy as np

DEG = np.pi / 180.0


def _pair(a: float = 0.0, b: float = 0.0) -> np.ndarray:
    return np.array([a, b], dtype=np.float64)


@dataclass
class Pose:
    torso_pitch: float = 0.0
    torso_roll: float = 0.0
    torso_twist: float = 0.0          # shoulders turned against the hips
    head_pitch: float = 0.0
    head_yaw: float = 0.0
    head_roll: float = 0.0
    shoulder_flex: np.ndarray = field(default_factory=_pair)
    shoulder_abd: np.ndarray = field(default_factory=_pair)
    arm_twist: np.ndarray = field(default_factory=_pair)   # turns the elbow's bending plane inwards
    elbow: np.ndarray = field(default_factory=_pair)
    hip_flex: np.ndarray = field(default_factory=_pair)
    hip_abd: np.ndarray = field(default_factory=_pair)
    knee: np.ndarray = field(default_factory=_pair)
    ankle: np.ndarray = field(default_factory=_pair)        # foot pitch, + points the toes down


# (low, high) in degrees; anatomical ranges, a little narrower than the extremes people reach.
JOINT_LIMITS_DEG: dict[str, tuple[float, float]] = {
    "torso_pitch": (-20, 95), "torso_roll": (-25, 25), "torso_twist": (-35, 35),
    "head_pitch": (-35, 45), "head_yaw": (-70, 70), "head_roll": (-25, 25),
    "shoulder_flex": (-50, 180), "shoulder_abd": (-15, 175), "arm_twist": (-30, 80),
    "elbow": (0, 150), "hip_flex": (-30, 125), "hip_abd": (-15, 50), "knee": (0, 150),
    "ankle": (-30, 45),
}


def clip_pose(pose: Pose) -> Pose:
    """The same pose with every angle inside JOINT_LIMITS_DEG."""
    out = {}
    for f in fields(pose):
        lo, hi = JOINT_LIMITS_DEG[f.name]
        out[f.name] = np.clip(getattr(pose, f.name), lo * DEG, hi * DEG)
    for name in ("torso_pitch", "torso_roll", "torso_twist", "head_pitch", "head_yaw", "head_roll"):
        out[name] = float(out[name])
    return Pose(**out)


def walk_pose(phase: float, stride: float = 1.0, run: bool = False) -> Pose:
    """One instant of a gait cycle; phase in radians (2*pi per cycle), stride scales the swing.

    The left leg is at `phase`, the right half a cycle later; each arm swings against its own leg.
    """
    hip_amp, arm_amp = (35 if run else 24) * stride, (45 if run else 22) * stride
    legs = np.array([phase, phase + np.pi])
    hip = hip_amp * np.sin(legs) + (10 if run else 2)
    # the knee bends most early in the swing (when the hip starts moving forward), stays soft in stance
    swing = np.maximum(0.0, np.cos(legs + 0.5)) ** 2
    knee = (10 if run else 6) + (95 if run else 55) * stride * swing
    ankle = 10 * np.sin(legs + 1.0)
    arm = -arm_amp * np.sin(legs)                     # left arm moves with the right leg
    elbow = (85 if run else 15) + (15 if run else 12) * np.maximum(0.0, -np.sin(legs + np.pi))
    return Pose(
        torso_pitch=(12 if run else 3) * DEG, torso_twist=-6 * stride * np.sin(phase) * DEG,
        shoulder_flex=arm * DEG, shoulder_abd=_pair(6, 6) * DEG, arm_twist=_pair(10, 10) * DEG,
        elbow=elbow * DEG, hip_flex=hip * DEG, hip_abd=_pair(2, 2) * DEG, knee=knee * DEG,
        ankle=ankle * DEG,
    )


def _arm_gesture(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(flex, abd, twist, elbow) in degrees for one arm, from a handful of everyday gestures."""
    kind = rng.choice(["hang", "front", "side", "up", "hip", "wave", "cross", "free"],
                      p=[0.22, 0.14, 0.13, 0.13, 0.1, 0.1, 0.08, 0.1])
    u = rng.uniform
    if kind == "hang":
        return u(-15, 20), u(2, 18), u(0, 30), u(0, 35)
    if kind == "front":
        return u(50, 110), u(-10, 25), u(0, 40), u(0, 60)
    if kind == "side":
        return u(-10, 20), u(60, 110), u(-20, 30), u(0, 50)
    if kind == "up":
        return u(140, 178), u(0, 50), u(0, 30), u(0, 40)
    if kind == "hip":
        return u(-25, 0), u(25, 50), u(50, 80), u(90, 130)
    if kind == "wave":
        return u(20, 60), u(60, 100), u(-30, 0), u(80, 140)
    if kind == "cross":
        return u(30, 70), u(-15, 5), u(50, 80), u(80, 130)
    lo, hi = zip(*(JOINT_LIMITS_DEG[n] for n in ("shoulder_flex", "shoulder_abd", "arm_twist", "elbow")))
    return tuple(rng.uniform(lo, hi))


def _arms(pose: Pose, rng: np.random.Generator, same_p: float = 0.3) -> Pose:
    left = _arm_gesture(rng)
    right = left if rng.random() < same_p else _arm_gesture(rng)
    flex, abd, twist, elbow = (np.array(v, dtype=np.float64) * DEG for v in zip(left, right))
    return replace(pose, shoulder_flex=flex, shoulder_abd=abd, arm_twist=twist, elbow=elbow)


def sample_pose(rng: np.random.Generator) -> Pose:
    """A random everyday pose: standing, walking, running, gesturing, bending, squatting or free limbs."""
    family = rng.choice(["stand", "walk", "run", "gesture", "bend", "squat", "free"],
                        p=[0.16, 0.24, 0.08, 0.2, 0.1, 0.08, 0.14])
    u = rng.uniform
    if family in ("walk", "run"):
        pose = walk_pose(u(0, 2 * np.pi), stride=u(0.6, 1.3), run=family == "run")
        if rng.random() < 0.3:
            pose = _arms(pose, rng, same_p=0.0)
    elif family == "stand":
        pose = Pose(hip_flex=u(-5, 12, 2) * DEG, hip_abd=u(0, 15, 2) * DEG, knee=u(0, 15, 2) * DEG)
        pose = _arms(pose, rng, same_p=0.5) if rng.random() < 0.5 else replace(
            pose, shoulder_flex=u(-10, 15, 2) * DEG, shoulder_abd=u(3, 15, 2) * DEG,
            arm_twist=u(0, 30, 2) * DEG, elbow=u(0, 30, 2) * DEG)
    elif family == "gesture":
        pose = _arms(Pose(hip_flex=u(-5, 20, 2) * DEG, hip_abd=u(0, 25, 2) * DEG, knee=u(0, 25, 2) * DEG), rng)
    elif family == "bend":
        pitch = u(30, 90)
        pose = Pose(torso_pitch=pitch * DEG, head_pitch=-u(0, 30) * DEG, hip_flex=u(-5, 10, 2) * DEG,
                    knee=u(0, 30, 2) * DEG, hip_abd=u(0, 15, 2) * DEG)
        # arms hang with gravity, i.e. forward relative to the bent torso, or reach for something
        pose = replace(pose, shoulder_flex=(pitch + u(-20, 30, 2)) * DEG, shoulder_abd=u(0, 20, 2) * DEG,
                       arm_twist=u(0, 40, 2) * DEG, elbow=u(0, 40, 2) * DEG)
    elif family == "squat":
        flex = u(60, 115)
        pose = _arms(Pose(torso_pitch=u(10, 45) * DEG, hip_flex=(flex + u(-10, 10, 2)) * DEG,
                          hip_abd=u(5, 30, 2) * DEG, knee=(flex + u(10, 35, 2)) * DEG,
                          ankle=-u(0, 25, 2) * DEG), rng, same_p=0.5)
    else:
        pose = Pose(**{
            name: (float(u(lo, hi)) if name.startswith(("torso", "head")) else u(lo, hi, 2)) * DEG
            for name, (lo, hi) in JOINT_LIMITS_DEG.items()
        })
        pose = replace(pose, torso_pitch=u(-10, 40) * DEG, knee=np.minimum(pose.knee, 110 * DEG))
    pose = replace(
        pose,
        torso_roll=pose.torso_roll + u(-6, 6) * DEG, torso_twist=pose.torso_twist + u(-10, 10) * DEG,
        head_pitch=pose.head_pitch + u(-15, 20) * DEG, head_yaw=pose.head_yaw + rng.normal(0, 20) * DEG,
        head_roll=pose.head_roll + u(-10, 10) * DEG,
    )
    return clip_pose(pose)
