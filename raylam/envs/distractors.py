"""The three Distracting Control Suite distractors, re-implemented on a dm-control Physics.

None of them touches the simulation state (qpos, qvel, act, controls): the camera pose is
written into ``data.cam_xpos/cam_xmat`` only for the duration of a render and then restored, the
colours are rendering-only model fields (``mat_rgba``, ``geom_rgba``), and the background lives
in the OpenGL skybox texture. So the same seed and actions give the same physics with or
without distractors.

Every distractor draws from its own ``np.random.Generator`` in a fixed order (per episode on
``reset``, per step on ``step``); rendering never draws, so frames are reproducible bit for bit.

Dynamics follow DCS (``distracting_control/{camera,color,background}.py``, Apache-2.0); this is
an independent implementation:

* camera: the camera orbits the point it looks at; its spherical position (radius, azimuth,
  polar angle) and roll start uniformly inside bounds of ``pi/2*scale`` (angles) and
  ``[-0.5*scale, +1.5*scale]`` (relative radius) and then drift with a velocity that does a
  bounded random walk (``0.1*scale`` step, ``0.4*scale`` maximum, both times radius/4);
* colour: each agent material's RGB starts uniformly within ``+-scale`` of the original and
  random-walks with std ``0.03*scale``, clipped to that box;
* background: a video replaces the skybox (all six cube faces) and plays forwards or backwards
  from a random frame, bouncing at its ends; the floor becomes translucent for domains where it
  would otherwise hide the background.
"""

from __future__ import annotations

import logging
import math

import mujoco
import numpy as np

from raylam.envs.backgrounds import Clip, ClipSpec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Camera (3-vectors in plain Python floats: numpy's per-call overhead dominates at this size)
# --------------------------------------------------------------------------------------------
def sphere_to_cart(r: float, h: float, v: float) -> tuple[float, float, float]:
    """Spherical (radius, azimuth h, polar angle v from +z) to Cartesian."""
    sv = math.sin(v)
    return (r * sv * math.cos(h), r * sv * math.sin(h), r * math.cos(v))


def cart_to_sphere(p) -> tuple[float, float, float]:
    x, y, z = float(p[0]), float(p[1]), float(p[2])
    return math.sqrt(x * x + y * y + z * z), math.atan2(y, x), math.atan2(math.sqrt(x * x + y * y), z)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _cross(a, b) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(a) -> tuple[float, float, float]:
    n = math.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])
    return (a[0] / n, a[1] / n, a[2] / n)


def look_at(forward, roll: float = 0.0, fallback_right=None) -> np.ndarray:
    """A MuJoCo camera frame (3x3; columns = camera x/right, y/up, z/back in world coordinates)
    looking along ``forward`` with the world's z up, then rolled by ``roll`` about the view axis."""
    f = _unit(forward)
    right = _cross(f, (0.0, 0.0, 1.0))
    if math.sqrt(right[0] ** 2 + right[1] ** 2 + right[2] ** 2) < 1e-6:  # looking straight up/down
        r = fallback_right if fallback_right is not None else (1.0, 0.0, 0.0)
        d = r[0] * f[0] + r[1] * f[1] + r[2] * f[2]
        right = (r[0] - d * f[0], r[1] - d * f[1], r[2] - d * f[2])
    right = _unit(right)
    back = (-f[0], -f[1], -f[2])
    up = _cross(back, right)
    if roll:  # rotate the right/up axes about the view axis
        c, s = math.cos(roll), math.sin(roll)
        right, up = (tuple(c * a + s * b for a, b in zip(right, up, strict=True)),
                     tuple(-s * a + c * b for a, b in zip(right, up, strict=True)))
    return np.array([[right[0], up[0], back[0]], [right[1], up[1], back[1]], [right[2], up[2], back[2]]])


class CameraShake:
    """DCS camera distractor: bounded, smoothly drifting orbit around the camera's target."""

    def __init__(self, physics, camera_id: int, scale: float, dynamic: bool, rng: np.random.Generator):
        self.physics = physics
        self.camera_id = camera_id
        self.scale = float(scale)
        self.dynamic = bool(dynamic)
        self.rng = rng
        half_pi = math.pi / 2
        self.angle_delta = half_pi * self.scale
        self.roll_delta = half_pi * self.scale
        self.vel_std = 0.1 * self.scale if dynamic else 0.0
        self.max_vel = 0.4 * self.scale if dynamic else 0.0
        self.roll_std = math.pi / 300 * self.scale if dynamic else 0.0
        self.max_roll_vel = math.pi / 50 * self.scale if dynamic else 0.0
        self.zoom_in = 0.5 * self.scale
        self.zoom_out = 1.5 * self.scale

    def reset(self) -> None:
        """Measure the unperturbed camera (after the physics reset) and sample a new pose."""
        data, model = self.physics.data, self.physics.model
        cid = self.camera_id
        pos = np.array(data.cam_xpos[cid])
        frame = np.array(data.cam_xmat[cid]).reshape(3, 3)
        target = np.array(data.subtree_com[model.cam_bodyid[cid]])
        self.distance = max(float(np.linalg.norm(pos - target)), 1e-3)
        r0, h0, v0 = cart_to_sphere(frame[:, 2] * self.distance)
        self.r0, self.h0, self.v0 = r0, h0, v0
        # A camera that is not upright (rolled, e.g. egocentric) keeps its own roll on top; one
        # that turns with its body (mode "fixed" on a moving body) is perturbed in its own frame.
        self.frame0 = frame
        self.frame0_flat = np.array(data.cam_xmat[cid])
        correction = look_at(-frame[:, 2], fallback_right=frame[:, 0]).T @ frame
        self.correction = None if np.allclose(correction, np.eye(3), atol=1e-9) else correction
        self.vel_scaling = r0 / 4.0
        self.r_bounds = (max(r0 * (1 - self.zoom_in), 1e-3), r0 * (1 + self.zoom_out))
        self.h_bounds = (-self.angle_delta, self.angle_delta)  # relative to h0 (no wrap-around)
        # Stay in the upper quadrant (never below the target's horizon), as DCS does.
        hi = max(min(v0 + self.angle_delta, math.pi / 2), min(v0, math.pi - 0.05))
        lo = min(max(v0 - self.angle_delta, 0.05), hi)
        self.v_bounds = (lo, hi)
        self.roll_bounds = (-self.roll_delta, self.roll_delta)
        rng = self.rng
        u = rng.uniform(size=6)
        self.r = _lerp(self.r_bounds, u[0])
        self.dh = _lerp(self.h_bounds, u[1])
        self.v = _lerp(self.v_bounds, u[2])
        self.roll = _lerp(self.roll_bounds, u[3])
        direction = _unit(tuple(rng.standard_normal(3)) if self.max_vel > 0 else (1.0, 0.0, 0.0))
        speed = u[4] * self.max_vel * self.vel_scaling
        self.vel = tuple(speed * d for d in direction)
        self.roll_vel = (2 * u[5] - 1) * self.max_roll_vel
        self.initial = self.info_state()

    def step(self) -> None:
        if not self.dynamic or self.scale == 0.0:
            return
        n = self.rng.standard_normal(4)
        k = self.vel_std * self.vel_scaling
        vel = (self.vel[0] + n[0] * k, self.vel[1] + n[1] * k, self.vel[2] + n[2] * k)
        limit = self.max_vel * self.vel_scaling
        speed = math.sqrt(vel[0] ** 2 + vel[1] ** 2 + vel[2] ** 2)
        if speed > limit:
            vel = tuple(c * limit / speed for c in vel)
        roll_vel = min(max(self.roll_vel + float(n[3]) * self.roll_std, -self.max_roll_vel), self.max_roll_vel)
        old = sphere_to_cart(self.r, self.h0 + self.dh, self.v)
        r, h, v = cart_to_sphere((old[0] + vel[0], old[1] + vel[1], old[2] + vel[2]))
        r = _clip(r, self.r_bounds)
        dh = _clip(_wrap(h - self.h0), self.h_bounds)
        v = _clip(v, self.v_bounds)
        new = sphere_to_cart(r, self.h0 + dh, v)
        self.vel = (new[0] - old[0], new[1] - old[1], new[2] - old[2])
        self.r, self.dh, self.v = r, dh, v
        roll = _clip(self.roll + roll_vel, self.roll_bounds)
        self.roll_vel = roll - self.roll
        self.roll = roll

    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The perturbed (position, flattened 3x3 frame) for the current unperturbed camera."""
        data = self.physics.data
        pos = data.cam_xpos[self.camera_id]
        frame = data.cam_xmat[self.camera_id]  # row-major 3x3; column 2 = the camera's back axis
        d = self.distance
        target = (pos[0] - frame[2] * d, pos[1] - frame[5] * d, pos[2] - frame[8] * d)
        offset = sphere_to_cart(self.r, self.h0 + self.dh, self.v)
        f0 = self.frame0
        new_frame = look_at((-offset[0], -offset[1], -offset[2]), self.roll,
                            fallback_right=(f0[0, 0], f0[1, 0], f0[2, 0]))
        if self.correction is not None:
            new_frame = new_frame @ self.correction
        if not np.array_equal(frame, self.frame0_flat):  # the camera turned with its body
            turn = frame.reshape(3, 3) @ self.frame0.T
            new_frame = turn @ new_frame
            offset = turn @ np.asarray(offset)
        new_pos = np.array([target[0] + offset[0], target[1] + offset[1], target[2] + offset[2]])
        return new_pos, new_frame.reshape(-1)

    def info_state(self) -> dict:
        return {"radius_ratio": self.r / self.r0, "azimuth": self.dh, "elevation": self.v0 - self.v,
                "roll": self.roll}

    def info(self) -> dict:
        return {"scale": self.scale, "dynamic": self.dynamic, "camera_id": self.camera_id,
                "initial": _floats(self.initial)}


def _lerp(bounds: tuple[float, float], u: float) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * u)


def _clip(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------
def agent_materials(model) -> tuple[np.ndarray, np.ndarray]:
    """(material ids, geom ids without a material) of every geom not attached to the world."""
    agent = np.asarray(model.geom_bodyid) > 0
    matids = np.asarray(model.geom_matid)
    mats = np.unique(matids[agent & (matids >= 0)])
    geoms = np.flatnonzero(agent & (matids < 0))
    return mats.astype(int), geoms.astype(int)


class ColorShift:
    """DCS colour distractor, restricted to the agent's bodies (materials and bare geoms)."""

    def __init__(self, physics, scale: float, dynamic: bool, rng: np.random.Generator):
        self.physics = physics
        self.scale = float(scale)
        self.dynamic = bool(dynamic)
        self.rng = rng
        self.step_std = 0.03 * self.scale if dynamic else 0.0
        model = physics.model
        self.mats, self.geoms = agent_materials(model)
        self.original_mat = np.array(model.mat_rgba[self.mats, :3])
        self.original_geom = np.array(model.geom_rgba[self.geoms, :3])
        original = np.concatenate([self.original_mat, self.original_geom])
        self.low = np.clip(original - self.scale, 0.0, 1.0)
        self.high = np.clip(original + self.scale, 0.0, 1.0)
        self.current = original.copy()

    def reset(self) -> None:
        u = self.rng.uniform(size=self.low.shape)
        self.current = self.low + u * (self.high - self.low)
        self.initial = self.current.copy()

    def step(self) -> None:
        if not self.dynamic or self.scale == 0.0:
            return
        change = self.rng.standard_normal(self.current.shape) * self.step_std
        self.current = np.clip(self.current + change, self.low, self.high)

    def apply(self) -> None:
        model = self.physics.model
        n = len(self.mats)
        model.mat_rgba[self.mats, :3] = self.current[:n]
        model.geom_rgba[self.geoms, :3] = self.current[n:]

    def restore(self) -> None:
        model = self.physics.model
        model.mat_rgba[self.mats, :3] = self.original_mat
        model.geom_rgba[self.geoms, :3] = self.original_geom

    def info(self) -> dict:
        model = self.physics.model
        names = [model.id2name(int(i), "material") for i in self.mats]
        return {"scale": self.scale, "dynamic": self.dynamic, "materials": names,
                "initial_rgb": _floats(self.initial[: len(self.mats)])}


# --------------------------------------------------------------------------------------------
# Background (skybox texture)
# --------------------------------------------------------------------------------------------
def skybox_texture(model) -> int:
    ids = np.flatnonzero(np.asarray(model.tex_type) == int(mujoco.mjtTexture.mjTEXTURE_SKYBOX))
    if len(ids) == 0:
        raise ValueError("the model has no skybox texture to show a background on")
    return int(ids[0])


def floor_materials(model) -> np.ndarray:
    plane = int(mujoco.mjtGeom.mjGEOM_PLANE)
    world = (np.asarray(model.geom_bodyid) == 0) & (np.asarray(model.geom_type) == plane)
    matids = np.asarray(model.geom_matid)[world]
    return np.unique(matids[matids >= 0]).astype(int)


class SkyboxUploader:
    """Shows an S x S RGB image on all six faces of the skybox cube map, and undoes it.

    Default ("gl") path: the image goes straight to the cube map's level 0 with
    ``glTexSubImage2D`` on the render thread, with mipmapping off for that texture. Regenerating
    mipmaps is most of what ``mjr_uploadTexture`` costs under software rendering (about 2-3 ms
    of a ~25 ms frame at 128 px), and the sky is never minified much at these sizes. The model's
    texture data stays untouched, so restoring the original sky is one ``mjr_uploadTexture``.

    Fallback ("mjr") path, used if PyOpenGL cannot be used: DCS's way, i.e. the skybox is made
    an S x S texture inside ``model.tex_data`` and re-uploaded with ``mjr_uploadTexture``.
    """

    def __init__(self, physics, size: int, mode: str = "auto"):
        self.physics = physics
        self.size = int(size)
        self.texid = skybox_texture(physics.model)
        self.mode = mode  # "auto" | "gl" | "mjr"
        self._prepared = False
        model = physics.model
        adr = int(model.tex_adr[self.texid])
        n = self.size * self.size * 3
        self._orig_dims = (int(model.tex_width[self.texid]), int(model.tex_height[self.texid]))
        self._orig_prefix = np.array(model.tex_data[adr:adr + n])
        self._adr = adr
        self.showing = False

    # All GL work runs on dm-control's render thread with the context current.
    def _call(self, fn, *args):
        with self.physics.contexts.gl.make_current() as ctx:
            return ctx.call(fn, *args)

    def _gl_prepare(self, texname: int, size: int) -> None:
        from OpenGL import GL

        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_CUBE_MAP, texname)
        for face in range(6):
            GL.glTexImage2D(GL.GL_TEXTURE_CUBE_MAP_POSITIVE_X + face, 0, GL.GL_RGB, size, size, 0,
                            GL.GL_RGB, GL.GL_UNSIGNED_BYTE, None)
        GL.glTexParameteri(GL.GL_TEXTURE_CUBE_MAP, GL.GL_TEXTURE_MIN_FILTER, GL.GL_LINEAR)
        GL.glTexParameteri(GL.GL_TEXTURE_CUBE_MAP, GL.GL_TEXTURE_MAX_LEVEL, 0)
        GL.glBindTexture(GL.GL_TEXTURE_CUBE_MAP, 0)

    def _gl_upload(self, texname: int, image: np.ndarray) -> None:
        from OpenGL import GL

        size = image.shape[0]
        fmt = GL.GL_RGBA if image.shape[2] == 4 else GL.GL_RGB
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_CUBE_MAP, texname)
        for face in range(6):
            GL.glTexSubImage2D(GL.GL_TEXTURE_CUBE_MAP_POSITIVE_X + face, 0, 0, 0, size, size,
                               fmt, GL.GL_UNSIGNED_BYTE, image)
        GL.glBindTexture(GL.GL_TEXTURE_CUBE_MAP, 0)

    def _gl_restore(self, texname: int) -> None:
        from OpenGL import GL

        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_CUBE_MAP, texname)
        GL.glTexParameteri(GL.GL_TEXTURE_CUBE_MAP, GL.GL_TEXTURE_MAX_LEVEL, 1000)  # GL default
        GL.glBindTexture(GL.GL_TEXTURE_CUBE_MAP, 0)
        mujoco.mjr_uploadTexture(self.physics.model.ptr, self.physics.contexts.mujoco.ptr, self.texid)

    def _texname(self) -> int:
        return int(self.physics.contexts.mujoco.ptr.texture[self.texid])

    def upload(self, image: np.ndarray) -> None:
        """Show ``image`` (uint8 [S, S, 3] RGB or [S, S, 4] RGBX) as the sky."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.shape != (self.size, self.size, image.shape[2]) or image.shape[2] not in (3, 4):
            raise ValueError(f"skybox image: expected [{self.size}, {self.size}, 3|4], got {image.shape}")
        if self.mode in ("auto", "gl"):
            try:
                if not self._prepared:
                    self._call(self._gl_prepare, self._texname(), self.size)
                    self._prepared = True
                self._call(self._gl_upload, self._texname(), image)
                self.mode = "gl"
                self.showing = True
                return
            except Exception as err:  # noqa: BLE001 - any PyOpenGL/driver failure: use the fallback
                if self.mode == "gl":
                    raise
                log.warning("direct skybox upload unavailable (%s); using mjr_uploadTexture", err)
                self.mode = "mjr"
        model = self.physics.model
        t = self.texid
        model.tex_width[t] = self.size
        model.tex_height[t] = self.size
        rgb = image[..., :3].reshape(-1)
        model.tex_data[self._adr:self._adr + rgb.size] = rgb
        self._call(mujoco.mjr_uploadTexture, model.ptr, self.physics.contexts.mujoco.ptr, t)
        self.showing = True

    def restore(self) -> None:
        """Put the model's own sky back (as rendered by plain dm-control)."""
        if not self.showing:
            return
        if self.mode == "gl":
            self._call(self._gl_restore, self._texname())
            self._prepared = False
        else:
            model = self.physics.model
            t = self.texid
            model.tex_width[t], model.tex_height[t] = self._orig_dims
            model.tex_data[self._adr:self._adr + self._orig_prefix.size] = self._orig_prefix
            self._call(mujoco.mjr_uploadTexture, model.ptr, self.physics.contexts.mujoco.ptr, t)
        self.showing = False


class VideoBackground:
    """DCS background distractor: one of the split's videos per episode on the skybox."""

    def __init__(self, physics, clips: list[ClipSpec], texture_size: int, ground_alpha: float,
                 dynamic: bool, rng: np.random.Generator, upload_mode: str = "auto"):
        if not clips:
            raise ValueError("no background videos to draw from")
        self.physics = physics
        self.clips = clips
        self.texture_size = int(texture_size)
        self.ground_alpha = float(ground_alpha)
        self.dynamic = bool(dynamic)
        self.rng = rng
        self.uploader = SkyboxUploader(physics, texture_size, mode=upload_mode)
        self.floor = floor_materials(physics.model)
        self.floor_alpha = np.array(physics.model.mat_rgba[self.floor, 3])
        self.clip: Clip | None = None
        self.index = 0
        self.direction = 1
        self._shown: int | None = None

    def reset(self) -> None:
        spec = self.clips[int(self.rng.integers(len(self.clips)))]
        if self.clip is None or self.clip.spec != spec:
            self.clip = Clip(spec, self.texture_size)
        self.index = int(self.rng.integers(len(self.clip)))
        self.direction = int(self.rng.choice([-1, 1]))
        self.start = (self.index, self.direction)
        self._shown = None

    def step(self) -> None:
        if not self.dynamic or self.clip is None or len(self.clip) < 2:
            return
        i = self.index + self.direction
        if i < 0 or i >= len(self.clip):  # bounce at either end
            self.direction = -self.direction
            i = self.index + self.direction
        self.index = i

    def apply(self) -> None:
        """Make the current frame the sky and the floor translucent (before a render)."""
        self.physics.model.mat_rgba[self.floor, 3] = self.ground_alpha
        if self._shown != self.index or not self.uploader.showing:
            self.uploader.upload(self.clip.frame_rgbx(self.index))
            self._shown = self.index

    def restore(self) -> None:
        self.physics.model.mat_rgba[self.floor, 3] = self.floor_alpha
        self.uploader.restore()
        self._shown = None

    def info(self) -> dict:
        return {"video": self.clip.spec.describe(), "frames": len(self.clip), "start_frame": self.start[0],
                "direction": self.start[1], "num_videos": len(self.clips), "ground_alpha": self.ground_alpha,
                "texture_size": self.texture_size, "dynamic": self.dynamic}


def _floats(x):
    """JSON-friendly copy of numpy scalars/arrays inside dicts and lists."""
    if isinstance(x, dict):
        return {k: _floats(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_floats(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x
